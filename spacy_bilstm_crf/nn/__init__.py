"""The tagger's PyTorch modules: BiLSTM, linear-chain CRF and the CRF's algorithms.

Plain PyTorch and NumPy; nothing here imports spaCy or thinc. `bilstm.py` (token vectors ->
emission scores, and the CRF head), `crf.py` (the CRF's API), `forward_backward.py` (log
partition, posteriors, gradients), `viterbi.py`, `nbest.py` (k best paths), `span_probs.py`
(probabilities of spans and of pieces' analyses), `feasibility.py` (errors that name the
positions no allowed path gets through), `char_cnn.py`, and the helpers `layout.py` (length
buckets) and `parallel.py` (threads).
"""

from .bilstm import BiLSTMTagger
from .crf import CRF, ConstraintError

__all__ = ["CRF", "BiLSTMTagger", "ConstraintError"]
