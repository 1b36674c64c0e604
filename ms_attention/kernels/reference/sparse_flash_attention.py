"""numpy golden of sparse_flash_attention, float64 math, written to be read.

Arrays come in as numpy (fp16/bf16 values already widened to float32/float64); the results are float64. It does
no validation: call it with inputs that passed infer/ (indices in range, lengths consistent).

For each batch b, query row s (inside the batch's valid rows) and KV head n2, the selected keys are the blocks
sparse_indices[..., n2, :] read until the first -1, each block i standing for tokens
[i * sparse_block_size, (i + 1) * sparse_block_size), kept when below the batch's kv length and, with
sparse_mode 3, below kv_b - q_b + s + 1. The G = N1 / N2 query heads of the KV head share the selection.
Scores use [query | query_rope] . [key | key_rope] times scale_value; the values are `value`.
"""
import numpy as np

FLT_MAX = float(np.finfo(np.float32).max)
# softmax_max / softmax_sum of a row that sees no key (as flash_attention_score's): its output is 0
EMPTY_MAX, EMPTY_SUM = -FLT_MAX, FLT_MAX


def _lengths(values, count, default, cumulative):
    if values is None:
        return np.full(count, default, np.int64), np.zeros(count, np.int64)
    values = np.asarray(values, np.int64).reshape(-1)
    if cumulative:
        starts = np.concatenate([[0], values[:-1]])
        return values - starts, starts
    return np.broadcast_to(values, (count,)).copy(), np.zeros(count, np.int64)


def selected_tokens(indices_row, sparse_block_size, visible):
    """The token positions one row reads: blocks until the first -1, each token kept when < visible."""
    tokens = []
    for index in indices_row:
        if index == -1:
            break
        for t in range(int(index) * sparse_block_size, (int(index) + 1) * sparse_block_size):
            if t < visible:
                tokens.append(t)
    return np.asarray(tokens, np.int64)


def sparse_flash_attention(query, key, value, sparse_indices, scale_value, block_table=None,
                           actual_seq_lengths_query=None, actual_seq_lengths_kv=None, query_rope=None,
                           key_rope=None, sparse_block_size=1, layout_query="BSND", layout_kv="BSND",
                           sparse_mode=3, return_softmax_lse=False):
    """Returns (attention_out in query's shape, softmax_max, softmax_sum), float64. softmax_max / softmax_sum
    are (B, N2, S1, G) for a BSND query, (N2, T1, G) for TND, or (1,) zeros when return_softmax_lse is False."""
    layout_query, layout_kv = layout_query.upper(), layout_kv.upper()
    tnd_q = layout_query == "TND"
    n1, d = query.shape[-2], query.shape[-1]
    n2 = key.shape[-2]
    g = n1 // n2
    if tnd_q:
        b = len(np.asarray(actual_seq_lengths_query).reshape(-1))
        q_len, q_start = _lengths(actual_seq_lengths_query, b, 0, True)
        rows_of = lambda bi: [q_start[bi] + s for s in range(q_len[bi])]  # noqa: E731
    else:
        b, s1 = query.shape[0], query.shape[1]
        q_len, _ = _lengths(actual_seq_lengths_query, b, s1, False)
        rows_of = lambda bi: [(bi, s) for s in range(q_len[bi])]  # noqa: E731
    if layout_kv == "PA_BSND":
        kv_len, _ = _lengths(actual_seq_lengths_kv, b, 0, False)
        block_size = key.shape[1]
    elif layout_kv == "TND":
        kv_len, kv_start = _lengths(actual_seq_lengths_kv, b, 0, True)
    else:
        kv_len, _ = _lengths(actual_seq_lengths_kv, b, key.shape[1], False)

    def kv_rows(tensor, bi, head, tokens):
        if tensor is None:
            return np.zeros((len(tokens), 0))
        if layout_kv == "PA_BSND":
            blocks = np.asarray(block_table)[bi, tokens // block_size]
            return tensor[blocks, tokens % block_size, head].astype(np.float64)
        if layout_kv == "TND":
            return tensor[kv_start[bi] + tokens, head].astype(np.float64)
        return tensor[bi, tokens, head].astype(np.float64)

    out = np.zeros(query.shape, np.float64)
    stats_shape = (n2, query.shape[0], g) if tnd_q else (b, n2, query.shape[1], g)
    softmax_max = np.full(stats_shape, EMPTY_MAX)
    softmax_sum = np.full(stats_shape, EMPTY_SUM)
    for bi in range(b):
        for s, row in enumerate(rows_of(bi)):
            visible = kv_len[bi]
            if sparse_mode == 3:
                visible = min(visible, kv_len[bi] - q_len[bi] + s + 1)
            for h2 in range(n2):
                tokens = selected_tokens(np.asarray(sparse_indices)[row][h2], sparse_block_size, visible)
                if tokens.size == 0:
                    continue
                k = kv_rows(key, bi, h2, tokens)
                v = kv_rows(value, bi, h2, tokens)
                kr = kv_rows(key_rope, bi, h2, tokens)
                heads = slice(h2 * g, (h2 + 1) * g)
                q = np.asarray(query[row][heads], np.float64)
                scores = q @ k.T
                if query_rope is not None:
                    scores = scores + np.asarray(query_rope[row][heads], np.float64) @ kr.T
                scores = scores * scale_value
                m = scores.max(axis=1, keepdims=True)
                p = np.exp(scores - m)
                l_sum = p.sum(axis=1, keepdims=True)
                out[row][heads] = (p @ v) / l_sum
                stats_row = (h2, row) if tnd_q else (bi, h2, s)
                softmax_max[stats_row] = m[:, 0]
                softmax_sum[stats_row] = l_sum[:, 0]
    if not return_softmax_lse:
        return out, np.zeros((1,)), np.zeros((1,))
    return out, softmax_max, softmax_sum
