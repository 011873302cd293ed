"""Text-to-speech for a robot that says what it is doing: one ``Speaker`` interface with backends
(piper, espeak-ng, IndexTTS2; ``speaker.py``), audio to the sound device or WAV files
(``audio.py``), the daemon's announcer (``announcer.py``) and ``policystack say`` (``commands.py``).
docs/interaction.md is the guide."""
