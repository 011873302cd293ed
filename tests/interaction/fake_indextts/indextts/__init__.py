"""A fake of IndexTTS's package (github.com/index-tts/index-tts) for the adapter's tests: its weights
and GPU are not here. Only the boundary is faked: ``IndexTTS2``'s constructor and ``infer`` keep the
real signatures (index-tts at ee40fa7, indextts/infer_v2.py and infer_v2_5.py), check what the real
ones read first (the config and the auxiliary models), and return what the real ones return
(streaming: a torch [1, n] float tensor in int16 units per segment, then the silence after it)."""
