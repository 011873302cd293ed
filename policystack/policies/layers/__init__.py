"""Building blocks shared by the policy families: FiLM, TokenLearner, decoder blocks, attention masks
from named token groups, and the FiLM-conditioned EfficientNet image tokenizer."""
