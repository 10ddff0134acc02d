"""The offline recommender that scores profiles (stage 2): frozen MiniLM features and a small head.

It reads what the paper's recommender reads (the K recent items with the user's ratings, a profile
text or none, the target's title, year and genres) and is fit once on calibration users, then
frozen. One module per part:

- `encoder`: the MiniLM sentence encoder (offline, cached embeddings);
- `features`: `OfflineConfig` and the featurizer (recent window, target, profile sentences, and
  the optional item statistics, item knowledge and oracle long-window blocks);
- `heads`: the linear heads (multinomial logistic regression for `sentiment`, a listwise softmax
  for `ranking`);
- `recommender`: `OfflineRecommender` (fit with a held-out share of calibration users, predict,
  save and load as arrays plus JSON).
"""

from lettingo_dagster.evaluation.offline.encoder import (
    MiniLMEncoder,
    TextEncoder,
    minilm_path,
    shared_encoder,
)
from lettingo_dagster.evaluation.offline.features import OfflineConfig, profile_segments
from lettingo_dagster.evaluation.offline.recommender import (
    FORMAT_VERSION,
    NO_PROFILE,
    OfflineRecommender,
)

__all__ = [
    "FORMAT_VERSION",
    "NO_PROFILE",
    "MiniLMEncoder",
    "OfflineConfig",
    "OfflineRecommender",
    "TextEncoder",
    "minilm_path",
    "profile_segments",
    "shared_encoder",
]
