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
