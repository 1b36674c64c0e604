"""numpy golden of incre_flash_attention, float64 math, written to be read.

Arrays come in as numpy (fp16/bf16 values already widened to float32/float64, int8 as int8); the result is
float64 (or int8 with post quantization). It does no validation: call it with inputs that passed infer/.
"""
import numpy as np


def _heads_first(x, layout, num_heads):
    """(B, 1, H) / (B, N, 1, D) / (B, 1, N, D) -> (B, N, D)."""
    if layout == "BSH":
        b, _, h = x.shape
        return x.reshape(b, num_heads, h // num_heads)
    if layout == "BNSD":
        return x[:, :, 0, :]
    return x[:, 0, :, :]


def _kv_bnsd(x, layout, kv_heads):
    """Non-paged key/value -> (B, kvN, S, D)."""
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, kv_heads, h // kv_heads).transpose(0, 2, 1, 3)
    if layout == "BNSD":
        return x
    return x.transpose(0, 2, 1, 3)


def _antiquant(x, scale, offset, row, kv_heads, head_dim):
    """int8 -> float64: (x + offset) * scale, per tensor (2,) or per channel (row of the (2, ...) tensors)."""
    x = x.astype(np.float64)
    if scale is None:
        return x
    s = np.asarray(scale, np.float64)[row]
    o = np.zeros_like(s) if offset is None else np.asarray(offset, np.float64)[row]
    if s.ndim > 0:  # per channel -> broadcast over (kvN, S, D)
        s = s.reshape(kv_heads, 1, head_dim)
        o = o.reshape(kv_heads, 1, head_dim)
    return (x + o) * s


def _gather_paged(cache, table_row, length, block_size, kv_heads, head_dim):
    """Tokens [0, length) of one sequence from a paged cache -> (kvN, length, D)."""
    out = np.zeros((kv_heads, length, head_dim), cache.dtype)
    for t in range(length):
        block, slot = table_row[t // block_size], t % block_size
        if cache.ndim == 3:   # (num_blocks, block_size, kvH)
            out[:, t, :] = cache[block, slot].reshape(kv_heads, head_dim)
        else:                 # (num_blocks, kvN, block_size, D)
            out[:, t, :] = cache[block, :, slot, :]
    return out


def incre_flash_attention(query, key, value, attn_mask=None, actual_seq_lengths=None, pse_shift=None,
                          quant_scale2=None, quant_offset2=None, antiquant_scale=None, antiquant_offset=None,
                          block_table=None, num_heads=1, input_layout="BSH", scale_value=1.0,
                          num_key_value_heads=0, block_size=0, kv_padding_size=None):
    layout = input_layout.upper()
    n = num_heads
    kvn = num_key_value_heads or n
    group = n // kvn
    q = _heads_first(np.asarray(query, np.float64), layout, n)          # (B, N, D)
    b, _, d = q.shape
    paged = block_table is not None

    if not paged:
        k_all = _kv_bnsd(np.asarray(key), layout, kvn)
        v_all = _kv_bnsd(np.asarray(value), layout, kvn)
        stored_s = k_all.shape[2]
    lengths = None
    if actual_seq_lengths is not None:
        lengths = np.broadcast_to(np.asarray(actual_seq_lengths, np.int64).reshape(-1), (b,))
    pad = None
    if kv_padding_size is not None and lengths is not None and not paged:
        pad = max(int(np.asarray(kv_padding_size).reshape(-1)[0]), 0)

    out = np.zeros((b, n, d), np.float64)
    computed = np.zeros((b, n), bool)
    for bi in range(b):
        if paged:
            length = int(lengths[bi])
            start = 0
            k = _gather_paged(np.asarray(key), block_table[bi], length, block_size, kvn, d)
            v = _gather_paged(np.asarray(value), block_table[bi], length, block_size, kvn, d)
        else:
            length = stored_s if lengths is None else int(lengths[bi])
            start = 0
            if pad is not None:
                start = stored_s - pad - length
                if start < 0:
                    continue          # the window starts before the cache: zeros
            k = k_all[bi, :, start:start + length]
            v = v_all[bi, :, start:start + length]
        if length == 0:
            continue
        k = _antiquant(k, antiquant_scale, antiquant_offset, 0, kvn, d)
        v = _antiquant(v, antiquant_scale, antiquant_offset, 1, kvn, d)
        positions = np.arange(start, start + length)     # columns in the stored (padded) frame
        masked = np.zeros(length, bool)
        if attn_mask is not None:
            masked = np.asarray(attn_mask).reshape(b, -1)[bi, positions] != 0
        for h in range(n):
            kh = h // group
            scores = (k[kh] @ q[bi, h]) * scale_value                   # (length,)
            if pse_shift is not None:
                pse = np.asarray(pse_shift, np.float64)
                scores = scores + pse[bi if pse.shape[0] > 1 else 0, h, 0, positions]
            scores = np.where(masked, -np.inf, scores)
            if np.all(masked):
                continue
            p = np.exp(scores - scores.max())
            out[bi, h] = (p @ v[kh]) / p.sum()
            computed[bi, h] = True

    if quant_scale2 is not None:
        out = _post_quant(out, computed, quant_scale2, quant_offset2, n, d)

    if layout == "BSH":
        return out.reshape(b, 1, n * d)
    if layout == "BNSD":
        return out[:, :, None, :]
    return out[:, None, :, :]


def _post_quant(out, computed, scale, offset, n, d):
    """int8 output: sat(round_half_even(O * scale + offset)); rows never computed stay 0."""
    s = np.asarray(scale, np.float64).reshape(-1)
    o = np.zeros_like(s) if offset is None else np.asarray(offset, np.float64).reshape(-1)
    if s.size > 1:
        s, o = s.reshape(n, d), o.reshape(n, d)
    y = np.clip(np.rint(out * s + o), -128, 127).astype(np.int8)
    y[~computed] = 0
    return y
