"""Building blocks shared by the policy families: FiLM, TokenLearner, decoder blocks, attention masks
from named token groups, the FiLM-conditioned EfficientNet image tokenizer, the observation history at
inference, 2-D position codes, random-shift augmentation and the LeRobot adapter base."""
