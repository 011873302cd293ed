"""`policystack autoencoder`: the small image autoencoder a world model's latents come from."""

from __future__ import annotations

import json

import pytest
import torch

from policystack.cli import main as cli_main
from policystack.datasets.loader import WindowedDataset
from policystack.perception.latents import ConvAutoencoder, load_latent_codec
from policystack.training.autoencoder import AutoencoderConfig, train_autoencoder

from .conftest import SIZE


def test_trains_and_writes_a_codec_directory(camera_ds, tmp_path, capsys):
    out = tmp_path / "ae"
    args = ["autoencoder", f"dataset={camera_ds}", f"out={out}", "steps=30", "batch_size=8", "widths=8,8",
            "channels=2", "crop=16", "lr=3e-3", "log_every=10"]
    assert cli_main(args) == 0
    assert f"wrote {out}: held-out L1" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "policystack-autoencoder" and cfg["channels"] == 2 and cfg["downsample"] == 4
    assert cfg["trained_on"] == [str(camera_ds.resolve())] and cfg["cameras"] == ["observation.images.front"]
    assert cfg["steps"] == 30 and cfg["crop"] == 16 and 0 < cfg["held_out_l1"] < 1
    codec = load_latent_codec(out)
    assert isinstance(codec, ConvAutoencoder) and not any(p.requires_grad for p in codec.parameters())
    frames = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    z = codec.encode(frames)
    assert z.shape == (4, 2, SIZE // 4, SIZE // 4) and codec.decode(z).shape == frames.shape
    # the measured statistics scale the latents: over the dataset's frames each channel is centred, spread ~1/3
    ds = WindowedDataset(camera_ds, keys=["observation.images.front"], cache_dir=False)
    z = codec.encode(ds.get_batch(list(range(len(ds))))["observation.images.front"])
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.1 and ((z.std(dim=(0, 2, 3)) - 1 / 3).abs() < 0.1).all()
    assert cli_main(args) == 2 and "exists" in capsys.readouterr().err  # never over an existing directory


def test_more_steps_reconstruct_better(camera_ds, tmp_path):
    base = dict(dataset=(str(camera_ds),), batch_size=8, widths=(8, 8), channels=2, lr=3e-3, log_every=1000)
    short = train_autoencoder(AutoencoderConfig(out=tmp_path / "a", steps=2, **base), progress=False)
    long = train_autoencoder(AutoencoderConfig(out=tmp_path / "b", steps=150, **base), progress=False)
    err = [json.loads((d / "config.json").read_text())["held_out_l1"] for d in (short, long)]
    assert err[1] < 0.7 * err[0], err


@pytest.mark.parametrize("args,message", [
    (["crop=6"], "crop=6: expected 0 or a multiple of the downsample factor 4"),
    (["cameras=side"], "cameras ['observation.images.side'] not in the dataset"),
    (["steps=0"], "steps=0: expected >= 1"),
])
def test_bad_arguments_name_the_problem(camera_ds, tmp_path, capsys, args, message):
    assert cli_main(["autoencoder", f"dataset={camera_ds}", f"out={tmp_path / 'x'}", "widths=8,8", *args]) == 2
    assert message in capsys.readouterr().err
