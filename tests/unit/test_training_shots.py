"""Retrieved few-shot examples in training prompts: a share of them, 1..k each, the way serving retrieves, never
the pair itself."""

from __future__ import annotations

from service.grammars import Example
from service.training.shots import RetrievedShots

POOL = [Example(f"post the {w} form answers to #sales", f"shot-{w}") for w in
        ("contact", "signup", "order", "refund", "feedback", "survey", "invite", "support")]


def test_a_share_of_prompts_carry_one_to_k_retrieved_examples_never_the_pair_itself():
    shots = RetrievedShots(POOL, k=3, share=0.5, seed=1)
    drawn = [shots(pair) for pair in POOL * 25]
    carrying = [d for d in drawn if d]
    assert 0.35 < len(carrying) / len(drawn) < 0.65
    assert {len(d) for d in carrying} == {1, 2, 3}
    for pair, examples in zip(POOL * 25, drawn, strict=True):
        assert pair not in examples


def test_no_example_carries_the_pairs_own_code():
    """A paraphrase with the same code is the nearest example BM25 finds; a training prompt must not get it, or
    the adapter learns to copy the nearest example instead of reading the request."""
    paraphrases = [Example(f"send the answers of the {w} form to #sales", f"shot-{w}") for w in
                   ("contact", "signup", "order", "refund")]
    pool = POOL + paraphrases
    shots = RetrievedShots(pool, k=3, share=1.0, seed=2)
    for pair in pool * 10:
        examples = shots(pair)
        assert 1 <= len(examples) <= 3
        assert all(ex.code != pair.code for ex in examples), (pair, examples)


def test_no_examples_asked_for_none_given():
    assert all(RetrievedShots(POOL, k=0, share=1.0)(pair) == [] for pair in POOL)


def test_training_rows_carry_the_shots_and_held_out_checks_never_do():
    from transformers import AutoTokenizer

    from service.config import Settings
    from service.grammars import GrammarRegistry
    from service.model import resolve_model
    from service.training.batching import Encoder

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None, Settings().cache_dir))
    flow = GrammarRegistry(Settings().grammars_dir).load().get("flow")
    encoder = Encoder(tokenizer, flow, examples=0, shots=RetrievedShots(POOL, k=2, share=1.0))
    trained, checked = (tokenizer.decode(encoder.pair(POOL[0], shots=s)[0]) for s in (True, False))
    assert "shot-" in trained and "shot-" not in checked


def test_examples_go_into_training_prompts_only_where_they_take_off_half_the_base_models_loss():
    """Measured on the base model: cron's examples took 83% off its held-out loss, NL2Bash's 37%; a training
    prompt with examples is about three times as long, so they are spent only where they carry the answer."""
    from service.training.shots import SHARE, share_for

    assert share_for(3.932, 0.653) == SHARE  # cron
    assert share_for(3.024, 1.916) == 0.0  # NL2Bash
    assert share_for(2.0, 1.0) == SHARE and share_for(2.0, 1.01) == 0.0
    assert share_for(0.0, 0.0) == 0.0  # nothing to take off


def test_batches_hold_rows_of_about_one_length_and_every_row_once():
    """A batch is as wide as its longest row: grouped by length, the padding falls, and no row is lost."""
    import random

    from transformers import AutoTokenizer

    from service.config import Settings
    from service.grammars import compile_grammar
    from service.model import resolve_model
    from service.training.batching import Encoder

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None, Settings().cache_dir))
    grammar = compile_grammar("words", 'start: /[a-z ]+/\n', origin="upload")
    rng = random.Random(0)
    rows = [Example(f"request {i}", " ".join(["word"] * rng.choice([1, 2, 40, 80]))) for i in range(64)]
    encoder = Encoder(tokenizer, grammar, examples=0)
    grouped = encoder.batches(rows, 8, random.Random(1))
    drawn = [encoder.batch(rows[i : i + 8]) for i in range(0, 64, 8)]

    def padding(batches) -> int:
        return sum(int((1 - b.attention).sum()) for b in batches)

    assert sum(b.ids.shape[0] for b in grouped) == 64
    def texts(batches) -> list[str]:
        return sorted(tokenizer.decode(row[mask.bool()]) for b in batches
                      for row, _, mask in zip(*b.full(), strict=True))

    assert texts(grouped) == texts(drawn)
    assert padding(grouped) < padding(drawn) / 3
