"""Document-level context for the tagger: each token's state next to the mean over its word.

A name is often easy to tag in one mention of a document and hard in another (a headline in
capitals, a surname alone after the full name). Pooling the BiLSTM states of every token
with the same word form in the sequence gives each mention what the others saw (the
non-local features of Ratinov and Roth, 2009; the pooled memory of Akbik et al., 2019).

Pure PyTorch: the caller says which tokens share a word with one group id per token.
"""

import torch
from torch import Tensor


def group_means(states: Tensor, groups: Tensor) -> Tensor:
    """Per token, the mean of `states` `(N, H)` over the tokens with its group id `(N,)`.

    Ids are non-negative and need not be contiguous; the result is `(N, H)` and
    differentiable in `states`. A token alone in its group gets its own state.
    """
    if groups.shape != states.shape[:1]:
        raise ValueError(
            f"groups must give one id per token: {tuple(groups.shape)} for {states.shape[0]}"
        )
    if not len(groups):
        return states.clone()
    if int(groups.min()) < 0:
        raise ValueError("group ids must be non-negative")
    _, index = torch.unique(groups, return_inverse=True)  # shape: (N,), ids 0..G-1
    count = int(index.max()) + 1
    sums = states.new_zeros(count, states.shape[1]).index_add(0, index, states)  # (G, H)
    sizes = torch.bincount(index, minlength=count).to(states.dtype)  # shape: (G,)
    return (sums / sizes.unsqueeze(1)).index_select(0, index)  # shape: (N, H)
