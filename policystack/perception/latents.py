"""Image latents for world models: camera frames <-> small latent maps a diffusion model predicts.

Three codecs, one interface (``LatentCodec``):

- ``PixelLatents(downsample)``: no weights; a frame area-averaged to 1/downsample of its size, 3
  channels in [-1, 1]. The baseline (and what tests and ``latent_model: null`` use).
- ``ConvAutoencoder``: a small convolutional VAE trained in the project on a dataset's frames
  (``policystack autoencoder``, policystack/training/autoencoder.py); ``widths`` stride-2 stages
  (downsample 2 ** len(widths)), ``channels`` latent channels. Saved as a directory: ``config.json``
  (``"format": "policystack-autoencoder"``, architecture, latent statistics, how it was trained) and
  ``model.safetensors``.
- ``DiffusersVAE``: a diffusers ``AutoencoderKL`` directory (``config.json`` + weights), e.g. the
  SDXL-VAE (``stabilityai/sdxl-vae``) a user has downloaded; loaded from the local path only, never
  fetched. Needs the ``diffusers`` package.

``load_latent_codec(path)`` picks by what the directory holds (``None``: pixels).

Latent scale: every codec returns latents centred with a spread of about 1/3 per channel, so that
diffusion's ``clip_sample`` range [-1, 1] holds three standard deviations. UWM's reference does the
same for the SDXL-VAE (latents times its ``scaling_factor``, then divided by 3); ours divide by 3 times
the per-channel std measured when the autoencoder was trained. Encoding takes the posterior mean (the
reference samples the posterior; the SDXL-VAE's posterior variance is negligible), so a frame's latent
is a fixed function of the frame.

Shapes: frames uint8 [N, 3, H, W] <-> latents float32 [N, C, H / f, W / f] (f = ``downsample``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from policystack.io import atomic_directory
from policystack.perception.image import file_digest

AUTOENCODER_FORMAT = "policystack-autoencoder"
AUTOENCODER_FORMAT_VERSION = 1
LATENT_SPREAD = 3.0  # latents are divided by 3 std (the reference's SDXL-VAE scale: scaling_factor, then / 3)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def to_signed(images: Tensor) -> Tensor:
    """uint8 [N, 3, H, W] -> float [N, 3, H, W] in [-1, 1] (ValueError on another dtype or layout)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 frames [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images.float() / 127.5 - 1.0


def to_uint8(images: Tensor) -> Tensor:
    """float [N, 3, H, W] in [-1, 1] -> uint8 (clamped, rounded)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class LatentCodec(nn.Module):
    """Frames <-> latents. ``channels`` C and ``downsample`` f describe the latent map; ``source`` says
    where the weights came from (for error messages and records)."""

    channels: int
    downsample: int
    source: str
    cache_id: str  # names the function encode computes (for feature caches)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of a frame of height x width (ValueError when f does not divide both)."""
        f = self.downsample
        if height % f or width % f:
            raise ValueError(f"{self.source}: frames of {height}x{width} do not divide by the latent downsample "
                             f"factor {f}; record or resize the cameras to a multiple of {f}")
        return self.channels, height // f, width // f

    def encode(self, images: Tensor) -> Tensor:
        """uint8 [N, 3, H, W] -> float [N, C, H/f, W/f]."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """float [N, C, h, w] -> uint8 [N, 3, h*f, w*f]."""
        raise NotImplementedError


class PixelLatents(LatentCodec):
    """The frame itself, area-averaged by ``downsample`` (no weights)."""

    def __init__(self, downsample: int = 8):
        super().__init__()
        if downsample < 1:
            raise ValueError(f"PixelLatents: downsample must be >= 1, got {downsample}")
        self.channels, self.downsample, self.source = 3, downsample, f"pixels/{downsample}"
        self.cache_id = f"pixels{downsample}"

    def encode(self, images: Tensor) -> Tensor:
        self.latent_shape(*images.shape[-2:])
        return F.avg_pool2d(to_signed(images), self.downsample)

    def decode(self, latents: Tensor) -> Tensor:
        return to_uint8(F.interpolate(latents, scale_factor=self.downsample, mode="bilinear", align_corners=False))


# --- the project's small autoencoder ---------------------------------------------------------------
def _conv_norm_act(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class ConvAutoencoder(LatentCodec):
    """A small convolutional VAE (see the module docstring).

    encoder: conv 3 -> widths[0]; per width: stride-2 conv + conv (GroupNorm, SiLU); 1x1 conv -> 2C (mean, log-variance)
    decoder: 1x1 conv C -> widths[-1]; per width, reversed: x2 nearest upsampling, conv + conv; 3x3 conv -> 3

    ``latent_mean`` / ``latent_std`` (per channel, buffers) are the statistics of the posterior means over
    the training frames; ``encode`` returns (mean - latent_mean) / (3 latent_std).
    """

    def __init__(self, channels: int = 4, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        if channels < 1 or not widths or min(widths) < 1:
            raise ValueError(f"ConvAutoencoder: channels must be >= 1 and widths positive, got {channels}, {widths}")
        self.channels, self.widths = channels, tuple(widths)
        self.downsample, self.source = 2 ** len(widths), "ConvAutoencoder (untrained)"
        self.cache_id = "ae-untrained"
        enc: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        c_in = widths[0]
        for w in widths:
            enc += [_conv_norm_act(c_in, w, stride=2), _conv_norm_act(w, w)]
            c_in = w
        enc.append(nn.Conv2d(c_in, 2 * channels, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(channels, widths[-1], 1)]
        c_in = widths[-1]
        for w in reversed(widths):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_norm_act(c_in, w), _conv_norm_act(w, w)]
            c_in = w
        dec.append(nn.Conv2d(c_in, 3, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(channels))
        self.register_buffer("latent_std", torch.full((channels,), 1.0 / LATENT_SPREAD))
        self.record: dict[str, Any] = {}  # how it was trained (saved in config.json)

    # -- the VAE proper (training) ----------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x float [N, 3, H, W] in [-1, 1] -> (mean, log-variance), each [N, C, H/f, W/f]."""
        self.latent_shape(*x.shape[-2:])
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def reconstruct(self, z: Tensor) -> Tensor:
        """Raw latents [N, C, h, w] -> float [N, 3, h*f, w*f] (about [-1, 1])."""
        return self.decoder(z)

    def loss(self, images: Tensor, kl_weight: float) -> tuple[Tensor, dict[str, float]]:
        """uint8 frames -> L1 reconstruction of a posterior sample + kl_weight * KL(posterior || N(0, 1))."""
        x = to_signed(images)
        mean, logvar = self.posterior(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        l1 = (self.reconstruct(z) - x).abs().mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}

    # -- the codec ----------------------------------------------------------------------------------
    def _scale(self) -> tuple[Tensor, Tensor]:
        return self.latent_mean.view(1, -1, 1, 1), (LATENT_SPREAD * self.latent_std).view(1, -1, 1, 1)

    def encode(self, images: Tensor) -> Tensor:
        shift, scale = self._scale()
        return (self.posterior(to_signed(images))[0] - shift) / scale

    def decode(self, latents: Tensor) -> Tensor:
        shift, scale = self._scale()
        return to_uint8(self.reconstruct(latents * scale + shift))

    # -- files ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path, replace: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` as one directory, atomically."""
        directory = Path(directory)
        with atomic_directory(directory, replace=replace) as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}))
            (tmp / CONFIG_NAME).write_text(json.dumps({
                "format": AUTOENCODER_FORMAT, "format_version": AUTOENCODER_FORMAT_VERSION,
                "channels": self.channels, "widths": list(self.widths), "downsample": self.downsample,
                **self.record}, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ConvAutoencoder:
        directory = Path(directory)
        cfg = _read_config(directory)
        if cfg.get("format") != AUTOENCODER_FORMAT or cfg.get("format_version") != AUTOENCODER_FORMAT_VERSION:
            raise ValueError(f"{directory / CONFIG_NAME}: not a {AUTOENCODER_FORMAT} of format_version "
                             f"{AUTOENCODER_FORMAT_VERSION} (format {cfg.get('format')!r}, version "
                             f"{cfg.get('format_version')!r})")
        try:
            model = cls(int(cfg["channels"]), tuple(int(w) for w in cfg["widths"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{directory / CONFIG_NAME}: bad architecture fields channels / widths ({e})") from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing (an autoencoder directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
        model.load_state_dict(load_file(weights))
        model.record = {k: v for k, v in cfg.items() if k not in ("format", "format_version", "channels", "widths",
                                                                   "downsample")}
        model.source = str(directory)
        model.cache_id = f"ae-{file_digest(str(weights))}"
        return model.requires_grad_(False).eval()


# --- diffusers AutoencoderKL (e.g. the SDXL-VAE) -------------------------------------------------------
class DiffusersVAE(LatentCodec):
    """A diffusers ``AutoencoderKL`` from a local directory, frozen. Latents: posterior mean times the
    VAE's ``scaling_factor``, divided by 3 (the reference's normalisation of the SDXL-VAE)."""

    def __init__(self, directory: str | Path):
        super().__init__()
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError(f"{directory}: a diffusers AutoencoderKL needs the diffusers package "
                              f"(pip install diffusers)") from e
        self.vae = AutoencoderKL.from_pretrained(str(directory), local_files_only=True).requires_grad_(False).eval()
        cfg = self.vae.config
        self.channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.source = str(directory)
        weights = sorted(Path(directory).glob("*.safetensors")) + sorted(Path(directory).glob("*.bin"))
        self.cache_id = "vae-" + "-".join(file_digest(str(w)) for w in weights)

    def encode(self, images: Tensor) -> Tensor:
        self.latent_shape(*images.shape[-2:])
        mean = self.vae.encode(to_signed(images)).latent_dist.mode()
        return mean * (self.scaling_factor / LATENT_SPREAD)

    def decode(self, latents: Tensor) -> Tensor:
        return to_uint8(self.vae.decode(latents * (LATENT_SPREAD / self.scaling_factor)).sample)


def _read_config(directory: Path) -> dict:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_NAME}; expected a policystack autoencoder "
                                f"(`policystack autoencoder`) or a diffusers AutoencoderKL directory")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def load_latent_codec(path: str | Path | None, downsample: int = 8) -> LatentCodec:
    """The codec ``path`` names: None -> ``PixelLatents(downsample)``; a directory whose config.json says
    ``"format": "policystack-autoencoder"`` -> ``ConvAutoencoder``; one with ``"_class_name":
    "AutoencoderKL"`` -> ``DiffusersVAE``. Frozen, in eval mode."""
    if path is None:
        return PixelLatents(downsample).eval()
    directory = Path(path).expanduser()
    cfg = _read_config(directory)
    if cfg.get("format") == AUTOENCODER_FORMAT:
        return ConvAutoencoder.load(directory)
    if cfg.get("_class_name") == "AutoencoderKL":
        return DiffusersVAE(directory)
    raise ValueError(f"{directory / CONFIG_NAME}: neither a policystack autoencoder (\"format\": "
                     f"\"{AUTOENCODER_FORMAT}\") nor a diffusers AutoencoderKL (\"_class_name\": \"AutoencoderKL\")")
