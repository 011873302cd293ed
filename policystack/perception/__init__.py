"""Perception modules shared by the policy families: text encoders (``text``), camera-frame preprocessing
(``preprocess``), a small conv encoder with spatial-softmax keypoints (``conv``); later pretrained image
encoders and VLMs."""
