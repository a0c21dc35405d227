"""Document-level word pooling: exact means, the ids a doc gives, training, save and load."""

from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.tokens import Doc
from spacy.training import Example

from spacy_bilstm_crf.bilstm import BiLSTMTagger
from spacy_bilstm_crf.model import word_ids
from spacy_bilstm_crf.word_pooling import group_means


@pytest.mark.parametrize("seed", range(5))
def test_group_means_equal_a_loop_over_groups(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    states = torch.randn(23, 5, dtype=torch.float64, generator=generator)
    groups = torch.randint(0, 40, (23,), generator=generator) * 3  # sparse, not contiguous
    means = group_means(states, groups)
    for i in range(len(groups)):
        assert torch.allclose(means[i], states[groups == groups[i]].mean(0), atol=1e-12)


def test_group_means_pass_gradients_to_every_member() -> None:
    states = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([7, 2, 7, 7])
    assert torch.autograd.gradcheck(lambda x: group_means(x, groups), (states,))
    (grad,) = torch.autograd.grad(group_means(states, groups)[0].sum(), states)
    assert torch.allclose(grad[[0, 2, 3]], torch.full((3, 3), 1 / 3, dtype=torch.float64))
    assert not grad[1].any()


def test_group_means_edge_cases_and_bad_ids() -> None:
    assert group_means(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).shape == (0, 4)
    alone = torch.randn(3, 2)
    assert torch.equal(group_means(alone, torch.tensor([0, 1, 2])), alone)
    with pytest.raises(ValueError, match="one id per token"):
        group_means(alone, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        group_means(alone, torch.tensor([0, -1, 2]))


def test_tagger_scores_each_token_from_its_state_and_its_word_mean() -> None:
    torch.manual_seed(0)
    module = BiLSTMTagger(6, 10, 4, word_pooling=True).double().eval()
    lengths = torch.tensor([5, 3])
    tokens = torch.randn(8, 6, dtype=torch.float64)
    words = torch.tensor([0, 1, 0, 2, 0, 5, 6, 5])
    states = module.encode(tokens, lengths)
    pooled = torch.stack([states[words == w].mean(0) for w in words])
    expected = module.projection(torch.cat([states, pooled], dim=1))
    assert torch.allclose(module(tokens, lengths, words), expected, atol=1e-12)
    with pytest.raises(ValueError, match="word id per token"):
        module(tokens, lengths)


def test_word_ids_join_case_variants_within_a_segment_only() -> None:
    nlp = spacy.blank("en")
    words = ["JAPAN", "beat", "Japan", ".", "japan", "won", "Syria"]
    doc = Doc(nlp.vocab, words=words)
    other = Doc(nlp.vocab, words=["Japan", "Japan"])
    ids = word_ids([doc, other], [[4, 3], [2]])  # doc cut into two segments
    assert ids[0] == ids[2] and len({ids[0], ids[1], ids[3]}) == 3
    assert ids[4] not in ids[:4]  # "japan" in the second segment is another group
    assert ids[7] == ids[8] and ids[7] not in ids[:7]
    assert word_ids([], []).shape == (0,)
    assert numpy.issubdtype(ids.dtype, numpy.integer)


TRAIN = [
    ("Paris is big . We saw Paris .", [(0, 5, "LOC"), (22, 27, "LOC")]),
    ("Ann met Bob in Rome .", [(0, 3, "PER"), (8, 11, "PER"), (15, 19, "LOC")]),
    ("Nothing here .", []),
]


def test_a_pooling_pipeline_learns_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    nlp = spacy.blank("en")
    config = {"model": {"hidden_width": 32, "word_pooling": True}}
    nlp.add_pipe("bilstm_crf", name="ner", config=config)
    examples = [Example.from_dict(nlp.make_doc(t), {"entities": e}) for t, e in TRAIN]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(100):
        nlp.update(examples, sgd=optimizer)
    texts = [text for text, _ in TRAIN]
    predicted = [
        [(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)
    ]
    assert predicted == [sorted(e) for _, e in TRAIN]
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp")
    again = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in loaded.pipe(texts)]
    assert again == predicted
    off = {"components": {"ner": {"model": {"word_pooling": False}}}}
    with pytest.raises(ValueError, match="word_pooling = False.*trained with True"):
        spacy.load(tmp_path / "nlp", config=off)
