"""A stand-in for microsoft/TRELLIS at its API boundary (TRELLIS needs a CUDA GPU and downloaded
weights). It exposes the calls the adapter makes, with TRELLIS's signatures and output types; its
"model" is a directory holding pipeline.json and slat.npz (the documented SLAT format), which it
returns as its sample, and its "decoder" meshes the occupancy like TRELLIS's mesh decoder would."""
