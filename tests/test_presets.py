"""The component decodes around what earlier components set, and `decode_around` around what a
person fixed: each against brute force over every tag sequence of the doc, scored with the
trained model's own emissions and transitions."""

import itertools
import math

import numpy
import pytest
import spacy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.training import Example

from spacy_bilstm_crf import decode_around
from spacy_bilstm_crf.annotate import annotate
from spacy_bilstm_crf.annotate.shards import read_shard
from spacy_bilstm_crf.ml import bilstm_crf as bilstm_crf_model
from spacy_bilstm_crf.tags import split_tag

TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
TEXT = "Shaka Khan lives in Berlin."
SMALL_MODEL = {
    "hidden_width": 32,
    "tok2vec": {"widths": [32, 16, 16, 16], "rows": [500, 200, 200, 200], "char_width": 8},
}

pytestmark = pytest.mark.xdist_group("presets")


@pytest.fixture(scope="module", params=["BIO", "BILUO"])
def trained(request) -> Language:
    """A small pipeline overfit on TRAIN_DATA, in each scheme."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", config={"scheme": request.param, "model": SMALL_MODEL})
    examples = [Example.from_dict(nlp.make_doc(text), ann) for text, ann in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(100):
        nlp.update(examples, sgd=optimizer)
    return nlp


@pytest.fixture(autouse=True)
def settings_restored(trained: Language):
    """Tests change the shared component's settings (rulers put the same object in new
    pipelines): each gets them back as they were."""
    ner = trained.get_pipe("bilstm_crf")
    saved, length = dict(ner.cfg), ner.model.attrs["max_length"]
    yield
    ner.cfg.clear()
    ner.cfg.update(saved)
    ner.model.attrs["max_length"] = length


def ents(doc: Doc) -> list[tuple[int, int, str]]:
    return [(ent.start, ent.end, ent.label_) for ent in doc.ents]


def entities_of(tags: list[str]) -> list[tuple[int, int, str]]:
    """The entities of a valid BIO or BILUO tag sequence."""
    found, start = [], None
    for i, tag in enumerate([*tags, "O"]):
        prefix, label = split_tag(tag)
        if start is not None and prefix not in ("I", "L"):
            found.append((start, i, split_tag(tags[start])[1]))
            start = None
        if prefix in ("B", "U"):
            start = i
        if prefix in ("L", "U"):
            found.append((start, i + 1, label))
            start = None
    return found


def analyses(nlp: Language, doc: Doc) -> list[tuple[float, list[tuple[int, int, str]]]]:
    """Every allowed tag sequence of `doc` (one segment) as (log probability, entities)."""
    ner = nlp.get_pipe("bilstm_crf")
    crf = bilstm_crf_model.torch_module(ner.model).crf
    trans, start, end = (s.detach().double().numpy() for s in crf._scores(torch.float64))
    emissions = numpy.asarray(ner.model.predict([doc])[0], dtype="float64")
    paths = numpy.asarray(list(itertools.product(range(crf.num_tags), repeat=len(doc))))
    steps = numpy.arange(len(doc))
    scores = emissions[steps, paths].sum(1) + start[paths[:, 0]] + end[paths[:, -1]]
    scores += trans[paths[:, :-1], paths[:, 1:]].sum(1)
    finite = numpy.isfinite(scores)
    log_z = numpy.logaddexp.reduce(scores[finite])
    names = ner.tag_names
    return [
        (float(score - log_z), entities_of([names[i] for i in path]))
        for score, path in zip(scores[finite], paths[finite])
    ]


def agrees(found: list, fixed: list, outside: set[int]) -> bool:
    """Whether an analysis has the `fixed` entities exactly and no entity over `outside`."""
    return all(ent in found for ent in fixed) and not any(
        outside & set(range(s, e)) for s, e, _ in found if (s, e, _) not in fixed
    )


def best_under(nlp, doc, fixed, outside=frozenset()) -> tuple[list, list]:
    """The best analysis agreeing with the presets, and all that agree (best first)."""
    ok = sorted(
        (a for a in analyses(nlp, doc) if agrees(a[1], fixed, set(outside))), key=lambda a: -a[0]
    )
    return ok[0][1], ok


def with_ruler(nlp: Language, patterns: list[dict]) -> Language:
    copy = spacy.blank("en")
    copy.add_pipe("entity_ruler").add_patterns(patterns)
    copy.add_pipe("bilstm_crf", source=nlp)
    return copy


def test_an_entity_ruler_before_the_tagger_is_decoded_around(trained: Language) -> None:
    """ "Khan" set as PERSON cuts the tagger's "Shaka Khan": the rest is decoded again under
    it, where keeping and dropping leaves "Shaka" with nothing."""
    alone = trained(TEXT)
    assert (0, 2, "PERSON") in ents(alone)
    nlp = with_ruler(trained, [{"label": "PERSON", "pattern": "Khan"}])
    ner = nlp.get_pipe("bilstm_crf")
    ner.cfg.update(confidence=True, nbest=3)
    doc = nlp(TEXT)
    expected, agreeing = best_under(trained, trained.make_doc(TEXT), [(1, 2, "PERSON")])
    assert ents(doc) == sorted(expected)
    # Probabilities given the preset: of the tagger's own entities, and of the 3 best.
    total = math.fsum(math.exp(lp) for lp, _ in agreeing)
    for span, score in zip(doc.spans["bilstm_crf"], doc.spans["bilstm_crf"].attrs["scores"]):
        assert (span.start, span.end) != (1, 2)
        mass = math.fsum(
            math.exp(lp) for lp, found in agreeing if (span.start, span.end, span.label_) in found
        )
        assert float(score) == pytest.approx(mass / total, rel=1e-4)
    nbest = [doc.spans[f"bilstm_crf_nbest_{r}"].attrs["probability"] for r in (1, 2, 3)]
    want = [math.exp(lp) / total for lp, _ in agreeing[:3]]
    assert nbest == pytest.approx(want, rel=1e-4)
    ner.cfg.update(presets="keep", confidence=False, nbest=0)
    kept = nlp(TEXT)
    assert (1, 2, "PERSON") in ents(kept) and not any(s == 0 for s, _, _ in ents(kept))
    ner.cfg.update(overwrite=True)
    assert ents(nlp(TEXT)) == ents(alone)


def test_unknown_labels_and_blocked_tokens_stay_outside(trained: Language) -> None:
    nlp = with_ruler(trained, [{"label": "ORG", "pattern": "Berlin"}])
    doc = nlp.get_pipe("entity_ruler")(nlp.make_doc(TEXT))
    doc.set_ents([], blocked=[doc[0:1]], default="unmodified")
    doc = nlp.get_pipe("bilstm_crf")(doc)
    expected, _ = best_under(trained, trained.make_doc(TEXT), [], outside={0, 4})
    assert ents(doc) == sorted(expected + [(4, 5, "ORG")])
    assert doc[0].ent_iob_ == "B" and doc[0].ent_type == 0  # still blocked, as spaCy's ner
    assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)


def test_the_outside_that_doc_ents_leaves_is_free(trained: Language) -> None:
    doc = trained.make_doc(TEXT)
    doc.ents = []
    assert ents(trained.get_pipe("bilstm_crf")(doc)) == ents(trained(TEXT))


def test_pipe_equals_call_with_presets_and_long_docs(trained: Language) -> None:
    nlp = with_ruler(
        trained, [{"label": "PERSON", "pattern": "Khan"}, {"label": "ORG", "pattern": "London"}]
    )
    nlp.get_pipe("bilstm_crf").cfg.update(confidence=True, nbest=2)
    long_text = " ".join([TEXT, "I like London and Berlin.", "Who is Shaka Khan?"] * 50)
    texts = [TEXT, "", "Khan", long_text, "Nothing to see here.", "London Khan Berlin"]
    one_by_one = [nlp(text) for text in texts]
    batched = list(nlp.pipe(texts, batch_size=4))
    assert len(nlp.make_doc(long_text)) > 512
    for alone, doc in zip(one_by_one, batched):
        assert ents(doc) == ents(alone)
        assert doc.spans["bilstm_crf"].attrs["scores"].tolist() == pytest.approx(
            alone.spans["bilstm_crf"].attrs["scores"].tolist(), rel=1e-5
        )
        assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)
        for ent in doc.ents:
            assert not ent[0].is_space and not ent[-1].is_space
    long_doc = batched[3]
    khan = [t.i for t in long_doc if t.text == "Khan"]
    assert all((i, i + 1, "PERSON") in ents(long_doc) for i in khan)


def test_a_preset_across_a_segment_cut_is_kept_whole(trained: Language) -> None:
    nlp = with_ruler(trained, [{"label": "PERSON", "pattern": "Khan lives in"}])
    nlp.get_pipe("bilstm_crf").model.attrs["max_length"] = 3  # cut after "lives"
    doc = nlp(TEXT)
    assert (1, 4, "PERSON") in ents(doc)
    assert not any(s < 4 and e > 1 for s, e, _ in ents(doc) if (s, e) != (1, 4))


def test_annotate_decodes_around_a_ruler(trained: Language, tmp_path) -> None:
    nlp = with_ruler(trained, [{"label": "PERSON", "pattern": "Khan"}])
    nlp.to_disk(tmp_path / "ruled")
    texts = [TEXT, "I like London and Berlin."]
    source = tmp_path / "in.jsonl"
    srsly.write_jsonl(source, [{"text": text} for text in texts])
    annotate(tmp_path / "ruled", source, tmp_path / "out")
    rows = [row for path in sorted((tmp_path / "out").glob("part-*")) for row in read_shard(path)]
    got = [[(e["start_char"], e["end_char"], e["label"]) for e in row["ents"]] for row in rows]
    want = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    assert got == want and (6, 10, "PERSON") in got[0]


def test_decode_around_a_person_s_fixes_equals_brute_force(trained: Language) -> None:
    doc = trained.make_doc(TEXT)
    result = decode_around(trained, TEXT, entities=[(6, 10, "PERSON")], outside=[(20, 26)], k=4)
    expected, agreeing = best_under(trained, doc, [(1, 2, "PERSON")], outside={4})
    assert ents(result.doc) == sorted(expected)
    total = math.fsum(math.exp(lp) for lp, _ in agreeing)
    assert result.probability == pytest.approx(math.exp(agreeing[0][0]) / total, rel=1e-4)
    assert [a.probability for a in result.analyses] == pytest.approx(
        [math.exp(lp) / total for lp, _ in agreeing[:4]], rel=1e-4
    )
    assert result.analyses[0].entities == result.entities
    for entity in result.entities:
        span = result.doc.char_span(entity.start_char, entity.end_char)
        if entity.source == "person":
            assert (span.start, span.end, entity.label) == (
                1,
                2,
                "PERSON",
            ) and entity.probability == 1
            continue
        mass = math.fsum(
            math.exp(lp) for lp, found in agreeing if (span.start, span.end, entity.label) in found
        )
        assert entity.source == "model" and entity.probability == pytest.approx(
            mass / total, rel=1e-4
        )


def test_a_click_is_completed_into_an_entity(trained: Language) -> None:
    doc = trained.make_doc(TEXT)
    result = decode_around(trained.get_pipe("bilstm_crf"), doc, clicks=[(22, "LOC")])
    clicked = [e for e in result.entities if e.start_char <= 22 < e.end_char]
    assert len(clicked) == 1 and clicked[0].label == "LOC" and clicked[0].source == "click"
    inside = [
        a for a in analyses(trained, doc) if any(s <= 4 < e and lab == "LOC" for s, e, lab in a[1])
    ]
    best = max(inside, key=lambda a: a[0])[1]
    assert ents(result.doc) == sorted(best)


def test_a_person_s_fix_wins_over_a_ruler(trained: Language) -> None:
    nlp = with_ruler(trained, [{"label": "ORG", "pattern": "Shaka Khan"}])
    result = decode_around(nlp, TEXT, entities=[(0, 5, "PERSON")])
    assert (0, 5, "PERSON", 1.0, "person") in result.entities
    assert not any(e.label == "ORG" for e in result.entities)
    kept = decode_around(nlp, TEXT, outside=[(20, 26)])
    assert (0, 10, "ORG", 1.0, "preset") in kept.entities


def test_impossible_or_overlapping_fixes_are_named(trained: Language) -> None:
    with pytest.raises(ValueError, match=r"Fixes overlap: characters 0\.\.10 \('Shaka Khan'\)"):
        decode_around(trained, TEXT, entities=[(0, 10, "PERSON")], outside=[(6, 8)])
    with pytest.raises(
        ValueError,
        match=r"No analysis satisfies the fixes together at doc 0, tokens 1\.\.1 \('Khan'\)",
    ):
        decode_around(trained, TEXT, entities=[(0, 10, "PERSON")], clicks=[(7, "LOC")])
    with pytest.raises(ValueError, match="touch no token"):
        decode_around(trained, TEXT, outside=[(5, 6)])
    with pytest.raises(ValueError, match="Unknown entity labels"):
        decode_around(trained, TEXT, clicks=[(1, "ORG")])
    with pytest.raises(TypeError, match="pass a Doc"):
        decode_around(trained.get_pipe("bilstm_crf"), TEXT)


def test_bad_presets_setting_is_named() -> None:
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="presets must be one of"):
        nlp.add_pipe("bilstm_crf", config={"presets": "ignore"})


def test_doc_ents_set_by_hand_are_fixed_or_kept(trained: Language) -> None:
    doc = trained.make_doc(TEXT)
    doc.set_ents([Span(doc, 4, 5, "LOC")])
    ner = trained.get_pipe("bilstm_crf")
    ner.cfg["presets"] = "keep"
    kept = ents(ner(doc.copy()))
    ner.cfg["presets"] = "fixed"
    assert (4, 5, "LOC") in kept and ents(ner(doc.copy())) == sorted(
        best_under(trained, trained.make_doc(TEXT), [(4, 5, "LOC")])[0]
    )


def test_analyze_is_conditional_on_the_presets(trained: Language) -> None:
    """What the annotation loop's select reads: the best analysis's probability and the tag
    posteriors, given an earlier component's entity."""
    nlp = with_ruler(trained, [{"label": "PERSON", "pattern": "Khan"}])
    doc = nlp.get_pipe("entity_ruler")(nlp.make_doc(TEXT))
    _, [analysis] = nlp.get_pipe("bilstm_crf").analyze([doc])
    _, agreeing = best_under(trained, trained.make_doc(TEXT), [(1, 2, "PERSON")])
    total = math.fsum(math.exp(lp) for lp, _ in agreeing)
    [piece] = analysis.pieces
    assert math.exp(piece.analyses[0][1]) == pytest.approx(
        math.exp(agreeing[0][0]) / total, rel=1e-4
    )
    names = nlp.get_pipe("bilstm_crf").tag_names
    forced = names.index("B-PERSON" if "L-PERSON" not in names else "U-PERSON")
    assert analysis.marginals[1, forced] == pytest.approx(1.0)
    assert analysis.marginals.sum(1) == pytest.approx(numpy.ones(len(doc)), abs=1e-5)
