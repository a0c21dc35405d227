"""Dependable in real use: settings at load time, untrusted pipelines, threads, long input,
short runs and the CRF's public API on infeasible gold."""

import contextlib
import io
import itertools
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
import srsly
import torch
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import load_config, registry
from thinc.api import Adam

from spacy_bilstm_crf.ml import bilstm_crf as bilstm_crf_model
from spacy_bilstm_crf.nn.parallel import one_intra_op_thread

REPO = Path(__file__).resolve().parents[1]
TRAIN_DATA = [
    ("Who is Shaka Khan?", {"entities": [(7, 17, "PERSON")]}),
    ("I like London and Berlin.", {"entities": [(7, 13, "LOC"), (18, 24, "LOC")]}),
    ("Shaka Khan lives in Berlin.", {"entities": [(0, 10, "PERSON"), (20, 26, "LOC")]}),
    ("Nothing to see here.", {"entities": []}),
]
SMALL = {
    "hidden_width": 32,
    "tok2vec": {"widths": [32, 16, 16, 16], "rows": [500, 200, 200, 200], "char_width": 8},
}


def ents(doc: Doc) -> list[tuple[int, int, str]]:
    return [(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents]


# One worker runs this file's tests, so that its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("dependable")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pipeline trained on TRAIN_DATA, component named "ner", saved to disk."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", name="ner", config={"model": SMALL})
    examples = [Example.from_dict(nlp.make_doc(t), a) for t, a in TRAIN_DATA]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(100):
        nlp.update(examples, sgd=optimizer)
    path = tmp_path_factory.mktemp("saved") / "nlp"
    nlp.to_disk(path)
    return path


def test_runtime_settings_given_at_load_time_take_effect(saved: Path) -> None:
    plain = spacy.load(saved)
    assert not plain("Shaka Khan lives in Berlin.").spans
    settings = {"confidence": True, "overwrite": True, "spans_key": "xx", "nbest": 2}
    nlp = spacy.load(saved, config={"components": {"ner": settings}})
    ner = nlp.get_pipe("ner")
    for key, value in settings.items():
        assert ner.cfg[key] == value
    doc = nlp("Shaka Khan lives in Berlin.")
    assert ents(doc) == ents(plain("Shaka Khan lives in Berlin."))
    assert len(doc.spans["xx"]) == len(doc.ents) and len(doc.spans["xx"].attrs["scores"]) > 0
    assert doc.spans["xx_nbest_1"].attrs["rank"] == 1
    strict = spacy.load(saved, config={"components": {"ner": {"threshold": 1.0}}})
    assert not strict("Shaka Khan lives in Berlin.").ents


def test_settings_that_shape_the_model_come_from_disk_and_a_conflict_is_an_error(
    saved: Path,
) -> None:
    with pytest.raises(ValueError, match="trained with 'BILUO'"):
        spacy.load(saved, config={"components": {"ner": {"scheme": "BIO"}}})
    widths = {"components": {"ner": {"model": {"tok2vec": {"widths": [8, 8, 8, 8]}}}}}
    with pytest.raises(ValueError, match="settings that shape the model come from training"):
        spacy.load(saved, config=widths)
    hidden = {"components": {"ner": {"model": {"hidden_width": 64}}}}
    with pytest.raises(ValueError, match="hidden_width = 64.*trained with 32"):
        spacy.load(saved, config=hidden)
    cut = spacy.load(saved, config={"components": {"ner": {"model": {"max_length": 3}}}})
    assert cut.get_pipe("ner").model.attrs["max_length"] == 3  # a runtime setting


class _Payload:
    """Unpickling this runs a shell command that creates a file: what a crafted pipeline would
    do. Only `os.system` is referenced, which any Python can import."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_a_pickle_payload_in_the_weights_is_refused(
    saved: Path, tmp_path: Path, force_unsafe: bool
) -> None:
    """The model bytes carry a pickle that would create a file; loading raises a clear error
    and the file is never made, also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    crafted = tmp_path / "crafted"
    subprocess.run(["cp", "-r", str(saved), str(crafted)], check=True)
    marker = tmp_path / "pwned"
    model_file = crafted / "ner" / "model"
    message = srsly.msgpack_loads(model_file.read_bytes())
    buffer = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    for shims in message["shims"]:
        for i, shim in enumerate(shims):
            state = srsly.msgpack_loads(shim)
            state["state"] = buffer.getvalue()
            shims[i] = srsly.msgpack_dumps(state)
    model_file.write_bytes(srsly.msgpack_dumps(message))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if force_unsafe:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    code = f"import spacy\nspacy.load({str(crafted)!r})"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode != 0
    assert "hold something other than tensors" in result.stderr
    assert not marker.exists()


def test_parameter_averages_reach_the_torch_module(tmp_path: Path) -> None:
    """spaCy evaluates and saves inside `nlp.use_params(optimizer.averages)`: there the torch
    weights are the optimizer's averages (also in what is saved), and after it the trained
    weights are back."""
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bilstm_crf", name="ner", config={"model": SMALL})
    examples = [Example.from_dict(nlp.make_doc(t), a) for t, a in TRAIN_DATA]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=True)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    model = nlp.get_pipe("ner").model
    module = bilstm_crf_model.torch_module(model)
    shim = model.get_ref("tagger").layers[0].shims[0]
    trained = {name: value.clone() for name, value in module.state_dict().items()}
    averages = {
        name: torch.as_tensor(optimizer.averages[(shim.id, name)])
        for name, _ in module.named_parameters()
    }
    assert not torch.equal(averages["projection.weight"], trained["projection.weight"])
    with nlp.use_params(optimizer.averages):
        for name, value in module.named_parameters():
            assert torch.equal(value.detach(), averages[name]), name
        nlp.to_disk(tmp_path / "nlp")
    for name, value in module.state_dict().items():
        assert torch.equal(value, trained[name]), name
    loaded = bilstm_crf_model.torch_module(spacy.load(tmp_path / "nlp").get_pipe("ner").model)
    for name, value in loaded.named_parameters():
        assert torch.equal(value.detach(), averages[name]), name


def test_threads_setting_is_restored_and_applied(saved: Path) -> None:
    torch.set_num_threads(2)
    try:
        with one_intra_op_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        nlp = spacy.load(saved, config={"components": {"ner": {"threads": 2}}})
        texts = [text for text, _ in TRAIN_DATA] * 20
        two = [ents(doc) for doc in nlp.pipe(texts)]
        assert torch.get_num_threads() == 2  # restored after the component's calls
        nlp.get_pipe("ner").cfg["threads"] = 1
        assert [ents(doc) for doc in nlp.pipe(texts)] == two
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="threads must be 0"):
        spacy.blank("en").add_pipe("bilstm_crf", config={"threads": -1})


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_long_input_keeps_memory_bounded(saved: Path) -> None:
    """A 200,000-token document, 5,000 empty docs, and 100,000 words through nlp.pipe in
    batches: memory stays within bounds (the full-size figures are in benchmarks/)."""
    nlp = spacy.load(saved)
    words = ["Shaka", "Khan", "lives", "in", "Berlin", "."] * 33_334
    doc = nlp(Doc(nlp.vocab, words=words[:200_000]))
    assert len(doc.ents) > 30_000 and all(token.ent_iob for token in doc)
    empties = list(nlp.pipe([""] * 5000, batch_size=1000))
    assert len(empties) == 5000 and not any(d.ents for d in empties)
    texts = ["Shaka Khan lives in Berlin and London ."] * 12_500
    rss = []
    for i, _ in enumerate(nlp.pipe(texts, batch_size=500)):
        if i % 2500 == 0:
            rss.append(_rss_mb())
    assert max(rss[1:]) - rss[1] < 100, rss


def test_a_doc_over_512_tokens_is_cut_at_its_sentence_starts(saved: Path) -> None:
    """601 tokens: a one-token sentence, then 100 of six. The component's model packs whole
    sentences up to 512 tokens into one segment: its emissions are those of the first 511 tokens
    and of the other 90 as docs of their own; without sentence starts it cuts after token 512, which
    would split the "Shaka Khan" at 511-512."""
    nlp = spacy.load(saved)
    model = nlp.get_pipe("ner").model
    assert model.attrs["max_length"] == 512
    words = ["."] + ["Shaka", "Khan", "lives", "in", "Berlin", "."] * 100
    starts = [True] + [True, False, False, False, False, False] * 100
    with_sentences = Doc(nlp.vocab, words=words, sent_starts=starts)
    without = Doc(nlp.vocab, words=words)
    for doc, cut in [(with_sentences, 511), (without, 512)]:
        pieces = [Doc(nlp.vocab, words=words[:cut]), Doc(nlp.vocab, words=words[cut:])]
        segments = model.predict([doc])  # the emissions of each segment the model cut
        assert [len(segment) for segment in segments] == [cut, len(words) - cut]
        expected = numpy.concatenate(model.predict(pieces))
        assert numpy.allclose(numpy.concatenate(segments), expected, atol=1e-5), cut
    tagged = nlp(with_sentences)
    assert (511, 513, "PERSON") in [(e.start, e.end, e.label_) for e in tagged.ents]


def test_short_runs_warm_up_quickly() -> None:
    """With `--training.max_steps 40` the learning rate is near its peak within the run."""
    config = load_config(REPO / "configs" / "bilstm_crf.cfg", overrides={"training.max_steps": 40})
    schedule = registry.resolve({"s": config["training"]["optimizer"]["learn_rate"]})["s"]
    rates = [next(schedule) for _ in range(40)]
    peak = config["training"]["optimizer"]["learn_rate"]["initial_rate"]
    assert rates[0] == 0.0 and rates[30] > 0.9 * peak


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def bio_paths(tags: list[str], length: int) -> list[tuple[int, ...]]:
    """Every tag path of `length` that BIO allows: `I-X` only after `B-X` or `I-X`."""
    paths = []
    for path in itertools.product(range(len(tags)), repeat=length):
        names = ["O", *(tags[i] for i in path)]
        if all(not b.startswith("I-") or a in (f"B-{b[2:]}", b) for a, b in zip(names, names[1:])):
            paths.append(path)
    return paths


def test_readme_crf_example_prints_what_brute_force_gives() -> None:
    """The README's CRF example, run as shown: its tag names are the ones its comment lists, and
    the NLL (with an unknown tag), the 3 best paths, their scores and probabilities equal
    those found by enumerating every BIO path of each sequence."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(from spacy_bilstm_crf import CRF.*?)```", readme, re.S)
    assert example, "README has no standalone CRF example"
    torch.manual_seed(0)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(example.group(1), namespace)
    crf, emissions, mask, gold = (namespace[k] for k in ("crf", "emissions", "mask", "gold"))
    tags = namespace["tags"]
    listed = re.search(r"tag_names\(.*\)\s*#\s*(.*)", example.group(1)).group(1).split(", ")
    assert tags == listed
    trans = crf.transitions.detach().double()
    start, end = crf.start_transitions.detach().double(), crf.end_transitions.detach().double()
    nll, best, best_scores, probs = [], [], [], []
    for row, length in enumerate(mask.sum(1).tolist()):
        e = emissions[row].detach().double()
        scored = []
        for path in bio_paths(tags, length):
            score = start[path[0]] + end[path[-1]] + sum(e[t, i] for t, i in enumerate(path))
            scored.append((float(score + sum(trans[a, b] for a, b in zip(path, path[1:]))), path))
        scored.sort(reverse=True)
        log_z = logsumexp([s for s, _ in scored])
        known = [(t, int(g)) for t, g in enumerate(gold[row][:length]) if g >= 0]
        nll.append(log_z - logsumexp([s for s, p in scored if all(p[t] == g for t, g in known)]))
        best.append([list(p) + [-1] * (mask.shape[1] - length) for _, p in scored[:3]])
        best_scores += [s for s, _ in scored[:3]]
        probs += [math.exp(s - log_z) for s, _ in scored[:3]]
    assert namespace["paths"].tolist() == best
    assert namespace["scores"].flatten().tolist() == pytest.approx(best_scores, abs=1e-5)
    shown = [float(n) for n in re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", printed.getvalue())]
    assert shown[:2] == pytest.approx(nll, abs=1e-4)  # print shows 4 decimals
    assert shown[2:] == pytest.approx(probs, abs=1e-4)


def test_infeasible_gold_names_row_and_position() -> None:
    from spacy_bilstm_crf import CRF, allowed_transitions, tag_names

    tags = tag_names(["PER"])  # O B-PER I-PER
    crf = CRF(len(tags), allowed_transitions(tags, "BIO"))
    gold = torch.tensor([[1, 2, 0], [0, 2, 0]])  # row 1: O -> I-PER
    with pytest.raises(ValueError, match="row 1 break the constraints at position 1"):
        crf.nll(torch.randn(2, 3, len(tags)), gold)
    assert torch.isinf(crf.nll(torch.randn(2, 3, len(tags)), gold, infeasible="inf")[1])


def test_torch_module_is_reached_in_one_place(saved: Path) -> None:
    nlp: Language = spacy.load(saved)
    module = bilstm_crf_model.torch_module(nlp.get_pipe("ner").model)
    assert module.threads >= 1 and module.crf.num_tags == 1 + 4 * 2


def test_nbest_per_sentence_gives_each_sentence_its_analyses(saved: Path) -> None:
    settings = {"nbest": 3, "nbest_unit": "sentence", "overwrite": True}
    nlp = spacy.load(saved, config={"components": {"ner": settings}})
    words = ["Shaka", "Khan", "lives", ".", "I", "like", "Berlin", "."]
    starts = [True, False, False, False, True, False, False, False]
    doc = nlp(Doc(nlp.vocab, words=words, sent_starts=starts))
    key = nlp.get_pipe("ner").cfg["spans_key"]
    groups = [doc.spans[f"{key}_nbest_{rank}"] for rank in (1, 2, 3)]
    for rank, group in enumerate(groups, start=1):
        assert group.attrs["rank"] == rank and group.attrs["pieces"] == [[0, 4], [4, 8]]
        assert "probability" not in group.attrs  # one per sentence instead
        for span in group:
            assert any(start <= span.start and span.end <= end for start, end in [(0, 4), (4, 8)])
    for piece in range(2):
        probabilities = [group.attrs["probabilities"][piece] for group in groups]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-9
    with pytest.raises(ValueError, match="nbest_unit must be"):
        spacy.blank("en").add_pipe("bilstm_crf", config={"nbest_unit": "word"})
