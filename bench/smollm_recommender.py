"""SmolLM2-135M-Instruct as the LLM recommender: sentiment accuracy on calibration users against
the offline recommender and the majority label, and whether it may serve.

    python bench/smollm_recommender.py [--users 10] [--train-users 60] [--preset smollm]

Needs MovieLens-100K in the data cache (`lettingo data fetch movielens-100k`) and the model
(`lettingo models fetch smollm2-135m-instruct`). Builds the preset's `task_samples` for
MovieLens-100K in a scratch warehouse, then on the first `--users` calibration users (all of
their targets, sentiment labels) compares:

- the majority label of training users' targets;
- the offline recommender (MiniLM features and heads) fit on `--train-users` training users
  with their writer profiles, as the `recommender` asset fits it;
- SmolLM2 through `LLMRecommender` (the paper's prompt, the three labels' probabilities in one
  forward pass);

each with no profile (the recent window only) and with the genre-affinity writer profile.
Ends with PASS when SmolLM2's best accuracy beats the majority label's and is at least the
offline recommender's best (it may serve as the recommender), FAIL otherwise: the comparison and
rule of the graph's `recommender_trial` asset (lettingo_dagster/evaluation/recommender_trial.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from verdict import verdict  # noqa: E402

DATASET = "movielens-100k"
PROFILE_STYLE = "genre_affinity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the fetched SmolLM2)")
    parser.add_argument("--preset", default="smollm", help="preset whose task settings to use")
    parser.add_argument("--users", type=int, default=10, help="calibration users measured")
    parser.add_argument("--train-users", type=int, default=60, help="users the offline head fits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"

    import dagster as dg
    import duckdb

    from lettingo_dagster.data.assets import data_assets
    from lettingo_dagster.evaluation.examples import load_target_examples
    from lettingo_dagster.evaluation.llm_recommender import LLMRecommender
    from lettingo_dagster.evaluation.recommender import offline_recommender
    from lettingo_dagster.evaluation.recommender_trial import decide, first_users, run_trial
    from lettingo_dagster.models.fetch import SMOLLM2_135M_INSTRUCT, model_folder
    from lettingo_dagster.models.local import LocalCausalLM
    from lettingo_dagster.resources import SettingsResource, Warehouse
    from lettingo_dagster.settings import load_preset

    folder = args.model or model_folder(SMOLLM2_135M_INSTRUCT.name)
    if not (folder / "config.json").is_file():
        print(
            f"{folder}: no model; run `lettingo models fetch smollm2-135m-instruct`",
            file=sys.stderr,
        )
        return 2
    preset = load_preset(args.preset)
    with tempfile.TemporaryDirectory(prefix="smollm-recommender-") as scratch:
        warehouse = Path(scratch) / "warehouse.duckdb"
        result = dg.materialize(
            data_assets,
            partition_key=DATASET,
            instance=dg.DagsterInstance.ephemeral(),
            resources={
                "settings": SettingsResource(preset=args.preset),
                "warehouse": Warehouse(database=str(warehouse)),
            },
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        if not result.success:
            print(f"could not build task_samples for {DATASET} (is it fetched?)", file=sys.stderr)
            return 2
        with duckdb.connect(str(warehouse), read_only=True) as con:
            train = load_target_examples(con, DATASET, preset.task, splits=("train",))
            calibration = load_target_examples(con, DATASET, preset.task, splits=("calibration",))

    train = first_users(train, args.train_users)
    calibration = first_users(calibration, args.users)
    print(
        f"{DATASET}, preset {args.preset}: {len({e.user_id for e in calibration})} calibration "
        f"users, {len(calibration)} targets; labels {dict(Counter(e.label for e in calibration))}"
    )
    model = LocalCausalLM(
        folder, torch_threads=args.threads, batch_size=args.batch_size, device="cpu"
    )
    began = time.perf_counter()
    trial = run_trial(
        LLMRecommender(model, preset.recommender.prompt_template),
        offline_recommender(preset, None),
        train,
        calibration,
        PROFILE_STYLE,
        log=lambda line: print(f"  {line}", flush=True),
    )
    print(trial.round(3).to_string(index=False))
    llm_seconds = trial.loc[trial.recommender == "llm", "seconds"].sum()
    print(
        f"  (SmolLM2: {2 * len(calibration)} prompts in {llm_seconds:.0f} s, "
        f"{2 * len(calibration) / max(llm_seconds, 1e-9):.2f} prompts/s, load average "
        f"{os.getloadavg()[0]:.1f}; all of it {time.perf_counter() - began:.0f} s)"
    )
    decision = decide(trial)
    return verdict(decision.serves, decision.verdict)


if __name__ == "__main__":
    sys.exit(main())
