"""The project's own small generator: tokenizer, packing, labels and a short pretraining."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from synthetic import TINY_GENERATOR

from lettingo_dagster.exploration import base_generator as bg
from lettingo_dagster.exploration.prompts import load_template
from lettingo_dagster.exploration.synthetic import genre_lover_histories
from lettingo_dagster.models.base import ChatPrompt, Decoding
from lettingo_dagster.settings import DEFAULT_WRITER_STYLES, BaseGeneratorSettings

TINY = {
    **TINY_GENERATOR.model_dump(),
    "max_positions": 2048,
    "epochs": 3,
    "learning_rate": 5e-3,
    "batch_size": 12,
}


@pytest.fixture(scope="module")
def template():
    return load_template("exploration_compact")


@pytest.fixture(scope="module")
def examples(template):
    return bg.training_examples(genre_lover_histories(10, 12), template)


@pytest.fixture(scope="module")
def tokenizer(examples):
    return bg.train_tokenizer(bg._tokenizer_texts(examples), 400)


def test_training_examples_cover_every_style_with_one_prompt_per_user(template):
    histories = genre_lover_histories(3, 8)  # no styles named: the default ones
    examples = bg.training_examples(histories, template)
    assert len(examples) == 3 * len(DEFAULT_WRITER_STYLES)
    assert [style for _, _, style in examples[: len(DEFAULT_WRITER_STYLES)]] == list(
        DEFAULT_WRITER_STYLES
    )
    for user in range(3):
        prompts = {
            prompt
            for prompt, _, _ in examples[
                user * len(DEFAULT_WRITER_STYLES) : (user + 1) * len(DEFAULT_WRITER_STYLES)
            ]
        }
        assert len(prompts) == 1
    assert all(profile.strip() for _, profile, _ in examples)


def test_window_views_add_seeded_subsets_with_their_own_prompts_and_profiles(template):
    histories = genre_lover_histories(2, 20)
    examples = bg.training_examples(histories, template, ("genre_affinity",), views=4, seed=3)
    assert {style for _, _, style in examples} == {"genre_affinity"}
    assert len(examples) == 2 * 4  # one profile per view; 20 items always leave two
    assert len({prompt for prompt, _, _ in examples}) == 8  # every view is a new prompt
    views = bg.window_views(histories[0], 4, 0.75, seed=3)
    assert views[0] == histories[0]  # the full window comes first
    for view in views[1:]:
        assert set(view.items) < set(histories[0].items)  # subsets, in the window's order
        assert list(view.items) == [i for i in histories[0].items if i in view.items]
    assert bg.window_views(histories[0], 4, 0.75, seed=3) == views  # seeded
    assert bg.window_views(histories[0], 4, 0.75, seed=4) != views
    assert bg.training_examples(histories, template) == bg.training_examples(
        histories, template, views=1
    )


def test_permuted_views_rename_genres_consistently_and_keep_the_first_window(template):
    (history,) = genre_lover_histories(1, 30, seed=5)
    names = sorted({g for item in history.items for g in item.genres} | {"Western"})
    views = bg.window_views(history, 6, 0.75, seed=3, genre_names=names)
    assert views[0] == history  # the user's own window is never renamed
    plain = bg.window_views(history, 6, 0.75, seed=3)
    renamed_any = False
    for view, same_items in zip(views[1:], plain[1:], strict=True):
        assert [i.item_id for i in view.items] == [i.item_id for i in same_items.items]
        # One permutation per view: every occurrence of a genre gets the same new name.
        mapping: dict[str, str] = {}
        for new, old in zip(view.items, same_items.items, strict=True):
            assert len(new.genres) == len(old.genres)
            for g_new, g_old in zip(new.genres, old.genres, strict=True):
                assert mapping.setdefault(g_old, g_new) == g_new
                assert g_new in names
        assert len(set(mapping.values())) == len(mapping)  # a permutation, not a merge
        renamed_any |= any(k != v for k, v in mapping.items())
    assert renamed_any
    assert bg.window_views(history, 6, 0.75, seed=3, genre_names=names) == views  # seeded

    taste = load_template("exploration_taste")
    examples = bg.training_examples(
        [history], taste, ("genre_share",), views=6, seed=3,
        permute_genres=True, genre_figures=False,
    )  # fmt: skip
    for prompt, profile, _ in examples:
        liked = prompt.user.split("watched most and liked ", 1)[1].split(" ")[0].rstrip(".")
        # The brief profile names the prompt's first liked genre first, whatever it was renamed
        # to: copying from the prompt is the only way to fit it.
        assert profile.startswith(f"Genre share: Mostly watches and enjoys {liked}")
        assert "rated, avg" not in profile


def test_tokenizer_round_trip_keeps_ids(tmp_path: Path, tokenizer, examples):
    from transformers import AutoTokenizer

    settings = BaseGeneratorSettings(**TINY)
    bg.build_model(tokenizer, settings).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"

    texts = [prompt.user for prompt, _, _ in examples[::6]] + [p for _, p, _ in examples[:6]]
    texts += ["<s><|user|>\nhello</s>", "Ünïcödé 🎬 titles, (1999) & co.", "  spaces\n\nand lines "]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
        assert reloaded.decode(ids) == tokenizer.decode(ids)
        if "\n" not in text:  # only line starts gain a space when decoded
            assert tokenizer.decode(ids).strip() == text.strip()
    prompt = examples[0][0]
    assert reloaded.apply_chat_template(
        prompt.as_messages(), add_generation_prompt=True, tokenize=False
    ) == tokenizer.apply_chat_template(
        prompt.as_messages(), add_generation_prompt=True, tokenize=False
    )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(reloaded, name) == getattr(tokenizer, name) is not None
    assert set(bg.SPECIAL_TOKENS) <= set(reloaded.all_special_tokens)


def test_chat_template_layout(tokenizer):
    text = tokenizer.apply_chat_template(
        ChatPrompt(user="U", system="S").as_messages(), add_generation_prompt=True, tokenize=False
    )
    assert text == "<s><|system|>\nS\n<|user|>\nU\n<|assistant|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def _packed_examples(tokenizer, examples):
    """A tiny model, twelve encoded (prompt, completion) examples and their packed groups."""
    settings = BaseGeneratorSettings(**TINY)
    model = bg.build_model(tokenizer, settings).eval()
    encoded = [
        bg.encode_example(tokenizer, prompt, profile) for prompt, profile, _ in examples[:12]
    ]
    groups, dropped = bg._group_examples(encoded, settings.max_positions)
    return model, encoded, groups, dropped


def test_packed_labels_mask_the_prompt_and_match_unpacked_loss(tokenizer, examples):
    import torch

    model, encoded, groups, dropped = _packed_examples(tokenizer, examples)
    assert dropped == 0 and len(groups) == 2 and all(len(g.completions) == 6 for g in groups)

    batch = bg._collate(groups, tokenizer.pad_token_id)
    # Labels are exactly the completions (profile + EOS), never a prompt token.
    expected = [token for _, completion in encoded for token in completion]
    assert batch.labels.tolist() == expected
    assert batch.labels.tolist().count(tokenizer.eos_token_id) == 12
    prompt_len = len(groups[0].prompt)
    assert batch.sources[0].tolist() == [0, prompt_len - 1]  # first profile token: after the prompt
    assert batch.position_ids[0, prompt_len].item() == prompt_len

    with torch.no_grad():
        packed = bg.packed_loss(model, batch).item()
    total, count = _unpacked_completion_loss(model, encoded)
    assert packed == pytest.approx(total / count, abs=1e-4)


def _unpacked_completion_loss(model, encoded) -> tuple[float, int]:
    """(summed loss, tokens) of every completion scored alone after its prompt, unpacked."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for prompt_ids, completion in encoded:
            ids = torch.tensor([prompt_ids + completion])
            labels = torch.tensor([[-100] * len(prompt_ids) + completion])
            total += model(input_ids=ids, labels=labels).loss.item() * len(completion)
            count += len(completion)
    return total, count


def test_prompt_loss_adds_each_prompts_own_tokens_once(tokenizer, examples):
    import torch

    model, encoded, groups, _ = _packed_examples(tokenizer, examples)
    batch = bg._collate(groups, tokenizer.pad_token_id, prompt_loss=True)
    completions = [token for _, completion in encoded for token in completion]
    prompts = [token for group in groups for token in group.prompt[1:]]
    assert sorted(batch.labels.tolist()) == sorted(completions + prompts)

    total, count = _unpacked_completion_loss(model, encoded)
    with torch.no_grad():
        packed = bg.packed_loss(model, batch).item()
        for group in groups:  # a prompt's tokens count once, however many profiles share it
            ids = torch.tensor([list(group.prompt)])
            total += model(input_ids=ids, labels=ids).loss.item() * (len(group.prompt) - 1)
            count += len(group.prompt) - 1
    assert packed == pytest.approx(total / count, abs=1e-4)


def test_too_long_examples_are_dropped_and_counted():
    encoded = [([1] * 50, [5, 6, 2]), ([1] * 50, [7, 2]), ([3] * 90, [5, 2]), ([4] * 10, [5] * 100)]
    groups, dropped = bg._group_examples(encoded, max_positions=64)
    assert dropped == 2
    assert [len(g.completions) for g in groups] == [2]
    assert groups[0].length == 50 + 2 + 1  # EOS is only ever a label


def test_batches_cover_each_group_once_sorted_by_length():
    groups = [bg._Group(prompt=(1,) * (10 + k), completions=((5, 2),) * 3) for k in range(40)]
    batches = bg._make_batches(groups, batch_size=6, rng=random.Random(0))
    flat = [g for batch in batches for g in batch]
    assert sorted(g.length for g in flat) == sorted(g.length for g in groups)
    assert all(len(batch) == 2 for batch in batches)


def test_pretrain_reduces_loss_saves_and_samples(tmp_path: Path, template):
    histories = genre_lover_histories(12, 10, seed=1)
    long_users = genre_lover_histories(2, 120, seed=2)  # far beyond max_positions
    examples = bg.training_examples(histories + long_users, template)
    settings = BaseGeneratorSettings(**{**TINY, "max_positions": 1024, "epochs": 4})
    lines: list[str] = []
    report = bg.pretrain(
        examples, settings, tmp_path / "model", torch_threads=1, log=lines.append, progress_every=5
    )

    assert report.dropped_examples == 2 * len(DEFAULT_WRITER_STYLES)
    assert report.examples == 12 * len(DEFAULT_WRITER_STYLES)
    assert report.parameters > 10_000 and report.train_tokens > report.target_tokens > 0
    assert report.steps >= 20 and report.epochs == pytest.approx(4, rel=0.1)
    assert report.seconds > 0 and report.tokens_per_second > 0
    assert report.loss_curve[0][0] == 1 and report.loss_curve[-1][0] == report.steps
    assert report.final_loss == report.loss_curve[-1][1] < report.loss_curve[0][1] - 1.0
    assert any("step" in line and "tokens/s" in line for line in lines)
    assert any("dropped 12" in line for line in lines)
    saved = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", bg.REPORT_FILE):
        assert (saved / name).is_file()
    assert json.loads((saved / bg.REPORT_FILE).read_text())["examples"] == report.examples

    samples = bg.sample_examples(saved, histories, template, 2, Decoding(max_new_tokens=16, seed=3))
    assert len(samples) == 2
    assert samples[0][0].startswith("Rated items") and "Movie" in samples[0][0]
    assert all(isinstance(text, str) for _, text in samples)


def test_copy_curriculum_trains_each_prompt_once_on_its_own_first_line(tokenizer, examples):
    groups = bg.copy_curriculum(tokenizer, examples, max_positions=2048)
    prompts = list(dict.fromkeys(prompt for prompt, _, _ in examples))
    assert len(groups) == len(prompts) < len(examples)  # several styles share one prompt
    by_prompt = {g.prompt: g.completions for g in groups}
    for prompt in prompts:
        ids, first_line = bg.encode_example(tokenizer, prompt, prompt.user.split("\n", 1)[0])
        assert by_prompt[tuple(ids)] == (tuple(first_line),)


def test_copy_curriculum_runs_before_the_profiles_and_stops_once_learned(tmp_path: Path, template):
    examples = bg.training_examples(genre_lover_histories(8, 10, seed=1), template)
    base = {**TINY, "epochs": 1, "copy_warmup_steps": 30}
    reports = {}
    for name, threshold in (("never", 1e-6), ("at_once", 100.0)):
        lines: list[str] = []
        settings = BaseGeneratorSettings(**{**base, "copy_warmup_loss": threshold})
        reports[name] = bg.pretrain(
            examples, settings, tmp_path / name, torch_threads=1, log=lines.append,
            progress_every=5,
        )  # fmt: skip
        copying = [i for i, line in enumerate(lines) if line.startswith("copying step")]
        profiles = [i for i, line in enumerate(lines) if line.startswith("profiles step")]
        assert copying and profiles and max(copying) < min(profiles)
    never, at_once = reports["never"], reports["at_once"]
    # A loss never reached: every warm-up step; one reached at once: the 20 steps the smoothed
    # loss needs before it is trusted.
    assert never.extra["copy_warmup_steps"] == 30 and never.extra["copy_warmup_final_loss"] > 1e-6
    assert at_once.extra["copy_warmup_steps"] == 20
    assert never.steps - at_once.steps == 10  # the profiles phase is the same length
    assert never.loss_curve[-1][0] == never.steps
    without = bg.pretrain(
        examples, BaseGeneratorSettings(**{**base, "copy_warmup_steps": 0}), tmp_path / "none",
        torch_threads=1, log=lambda _: None,
    )  # fmt: skip
    assert "copy_warmup_steps" not in without.extra and without.steps == never.steps - 30


def test_pretrain_with_nothing_that_fits_fails_clearly(tmp_path: Path, template):
    examples = bg.training_examples(genre_lover_histories(1, 120), template)
    settings = BaseGeneratorSettings(**{**TINY, "max_positions": 64})
    with pytest.raises(ValueError, match="max_positions=64"):
        bg.pretrain(examples, settings, tmp_path, log=lambda _: None)


def test_pretraining_twice_gives_the_same_weights(tmp_path: Path, template):
    """Two threads accumulate some gradients in a timing-dependent order unless the kernels are
    deterministic; a rerun must give the same model (the audit trail relies on it)."""
    import torch

    # The default generator's width: small models accumulate too few terms to show the race.
    examples = bg.training_examples(genre_lover_histories(16, 30, seed=4), template)
    settings = BaseGeneratorSettings(
        **{**TINY, "hidden_size": 128, "num_layers": 2, "num_heads": 8, "intermediate_size": 384,
           "vocab_size": 1000, "epochs": 1, "batch_size": 6}
    )  # fmt: skip
    before = torch.are_deterministic_algorithms_enabled()
    fill_before = torch.utils.deterministic.fill_uninitialized_memory
    weights = []
    for run in range(2):
        bg.pretrain(examples, settings, tmp_path / str(run), torch_threads=2, log=lambda _: None)
        weights.append((tmp_path / str(run) / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
    # The process's own settings come back after training (the NaN fill included).
    assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill_before
