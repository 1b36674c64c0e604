"""numpy golden of prompt_flash_attention, fused_infer_attention_score and fused_infer_attention_score_v2.

Float64 math, one batch and one head at a time, written to be read rather than to be fast. Arrays come in as
numpy (fp16/bf16 values already widened to float32 or float64; int8 as int8; a uint64 dequant scale holds the
float32 bit pattern in its low 32 bits); results are float64 (int8 with post-quantization) plus the float32
softmax_lse. It does no validation: call it with inputs the operators accept.

Positions: i is a query row and j a key column inside the valid window of their batch. Sparse modes use these
window-relative (i, j). A user mask and pse_shift are indexed in the stored frame of their tensor, which is the
same thing unless a left padding moves the window; TND batches and paged caches start at 0; with a shared prefix
the key columns run over the prefix followed by the batch's keys.
"""
import numpy as np

INT_MAX = 2147483647


# ---- layouts -------------------------------------------------------------------------------------------------

def _to_bnsd(x, layout, heads):
    """A dense BSH / BNSD / BSND tensor -> (B, heads, S, D)."""
    x = np.asarray(x)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)
    if layout == "BNSD":
        return x
    return x.transpose(0, 2, 1, 3)


def _from_bnsd(x, layout):
    """(B, N, S, D) -> the output layout (BSH, BNSD or BSND)."""
    if layout == "BSH":
        b, n, s, d = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)
    if layout == "BNSD":
        return x
    return x.transpose(0, 2, 1, 3)


def _cumulative_windows(cum):
    """Cumulative lengths (no leading 0) -> per-batch (start, length)."""
    ends = np.asarray(cum, np.int64).reshape(-1)
    starts = np.concatenate([[0], ends[:-1]])
    return starts, ends - starts


def _per_batch(lengths, batch):
    return np.broadcast_to(np.asarray(lengths, np.int64).reshape(-1), (batch,))


def _float_scale(x):
    """A dequant scale: float32, or uint64 carrying float32 bits in its low 32 bits."""
    x = np.asarray(x)
    if x.dtype == np.uint64:
        x = (x & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    return float(np.asarray(x, np.float64).reshape(-1)[0])


# ---- keys and values -----------------------------------------------------------------------------------------

def _gather_paged(cache, table_row, length, block_size, kv_heads):
    """Tokens [0, length) of one sequence from a paged cache -> (kvN, length, D)."""
    cache = np.asarray(cache)
    if cache.ndim == 3:                                  # (num_blocks, block_size, kvH)
        d = cache.shape[2] // kv_heads
    else:                                                # (num_blocks, kvN, block_size, D)
        d = cache.shape[3]
    out = np.zeros((kv_heads, length, d), cache.dtype)
    for t in range(length):
        block, slot = table_row[t // block_size], t % block_size
        if cache.ndim == 3:
            out[:, t, :] = cache[block, slot].reshape(kv_heads, d)
        else:
            out[:, t, :] = cache[block, :, slot, :]
    return out


class _Antiquant:
    """Dequantization of one int8 cache (key or value): (x + offset) * scale, per tensor, per channel (kvN, D)
    or per token (B, S) indexed by batch and position."""

    def __init__(self, scale, offset, mode, kv_heads, head_dim):
        self.per_token = mode == 1
        self.scale = np.asarray(scale, np.float64)
        self.offset = np.zeros_like(self.scale) if offset is None else np.asarray(offset, np.float64)
        if not self.per_token and self.scale.size > 1:
            self.scale = self.scale.reshape(kv_heads, 1, head_dim)
            self.offset = self.offset.reshape(kv_heads, 1, head_dim)
        elif not self.per_token:
            self.scale = self.scale.reshape(-1)[0]
            self.offset = self.offset.reshape(-1)[0]

    def __call__(self, x, batch, positions):
        """x: (kvN, len, D) int8 at `positions` of batch `batch` -> float64."""
        x = x.astype(np.float64)
        if self.per_token:                              # scale and offset (B, S)
            s, o = self.scale[batch, positions], self.offset[batch, positions]
            return (x + o[None, :, None]) * s[None, :, None]
        return (x + self.offset) * self.scale


def _antiquants(full_quant, key_dtype, kv_heads, head_dim, antiquant_scale, antiquant_offset, antiquant_mode,
                key_antiquant_scale, key_antiquant_offset, key_antiquant_mode,
                value_antiquant_scale, value_antiquant_offset, value_antiquant_mode):
    """(key dequant, value dequant), or (None, None) for a float cache or full quantization."""
    if full_quant or np.dtype(key_dtype) != np.int8:
        return None, None
    if key_antiquant_scale is not None:
        return (_Antiquant(key_antiquant_scale, key_antiquant_offset, key_antiquant_mode, kv_heads, head_dim),
                _Antiquant(value_antiquant_scale, value_antiquant_offset, value_antiquant_mode, kv_heads, head_dim))
    scale = np.asarray(antiquant_scale)
    offset = None if antiquant_offset is None else np.asarray(antiquant_offset)
    return (_Antiquant(scale[0], None if offset is None else offset[0], antiquant_mode, kv_heads, head_dim),
            _Antiquant(scale[1], None if offset is None else offset[1], antiquant_mode, kv_heads, head_dim))


# ---- masks ---------------------------------------------------------------------------------------------------

def _band(mode, q_len, kv_len, pre, nxt, user_mask_given):
    """Discarded (i, j) of the sparse mode on a q_len x kv_len window (SPEC table), without the user mask."""
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    d = kv_len - q_len
    if mode == 0:
        if not user_mask_given:
            return np.zeros((q_len, kv_len), bool)
        return (j - i > nxt) | (i - j > pre)
    if mode == 1:
        return np.zeros((q_len, kv_len), bool)
    if mode == 2:
        return j > i
    if mode == 3:
        return j > i + d
    return (j - i > nxt + d) | (j - i < d - pre)


def _mask_plane(mask, batch):
    """The (rows, cols) plane of a 2-D / 3-D / 4-D mask that serves batch `batch`."""
    m = np.asarray(mask)
    if m.ndim == 2:
        return m
    if m.ndim == 3:
        return m[batch if m.shape[0] > 1 else 0]
    return m[batch if m.shape[0] > 1 else 0, 0]


# ---- the computation -----------------------------------------------------------------------------------------

def _attend(scores, values, add_mask, discard, sink, full_quant):
    """One (batch, head): softmax over the visible scores, the output rows, the lse and which rows computed.
    scores (q, kv) float64, values (kv, D); add_mask additive (or None); discard bool (q, kv)."""
    q_len = scores.shape[0]
    if add_mask is not None:
        scores = scores + add_mask
    scores = np.where(discard, -np.inf, scores)
    out = np.zeros((q_len, values.shape[1]))
    lse = np.full(q_len, np.inf)
    computed = np.zeros(q_len, bool)
    for i in range(q_len):
        row = scores[i]
        visible = np.isfinite(row)
        if not visible.any():
            if sink is not None:
                lse[i] = sink
            continue
        m = row[visible].max()
        if sink is not None:
            m = max(m, sink)
        p = np.where(visible, np.exp(row - m), 0.0)
        total = p.sum() + (np.exp(sink - m) if sink is not None else 0.0)
        if full_quant is not None:
            quant_scale1, deq2 = full_quant
            p8 = np.clip(np.rint(p / total * quant_scale1), -128, 127)
            out[i] = (p8 @ values) * deq2
        else:
            out[i] = (p @ values) / total
        lse[i] = m + np.log(total)
        computed[i] = True
    return out, lse, computed


def fused_attention(query, key, value, *, query_rope=None, key_rope=None, pse_shift=None, attn_mask=None,
                    actual_seq_lengths=None, actual_seq_lengths_kv=None, deq_scale1=None, quant_scale1=None,
                    deq_scale2=None, quant_scale2=None, quant_offset2=None, antiquant_scale=None,
                    antiquant_offset=None, key_antiquant_scale=None, key_antiquant_offset=None,
                    value_antiquant_scale=None, value_antiquant_offset=None, block_table=None,
                    query_padding_size=None, kv_padding_size=None, key_shared_prefix=None,
                    value_shared_prefix=None, actual_shared_prefix_len=None, learnable_sink=None, num_heads=1,
                    scale_value=1.0, pre_tokens=INT_MAX, next_tokens=INT_MAX, input_layout="BSH",
                    num_key_value_heads=0, sparse_mode=0, block_size=0, antiquant_mode=0, key_antiquant_mode=0,
                    value_antiquant_mode=0, incremental_branch=True):
    """The whole family's inference attention. Returns (attention_out, softmax_lse): the output in the
    output layout (float64, or int8 with quant_scale2), the lse float32 (B, N, Sq, 1) or (T, N, 1).
    incremental_branch: a query of stored length 1 (not TND, no rope) follows incre_flash_attention's rules
    (fused_infer_attention_score); prompt_flash_attention has no such branch."""
    layout = input_layout.upper()
    in_layout = "BNSD" if layout == "BNSD_BSND" else layout
    out_layout = "BSND" if layout == "BNSD_BSND" else layout
    n = num_heads
    kvn = num_key_value_heads or n
    group = n // kvn
    tnd = layout == "TND"
    paged = block_table is not None
    full_quant = np.asarray(query).dtype == np.int8

    # query rows per batch: (N, stored S, D), window start and length
    if tnd:
        q_starts, q_lens = _cumulative_windows(actual_seq_lengths)
        q_all = np.asarray(query, np.float64)                               # (T, N, D)
        batch = len(q_lens)
        stored_q = None
    else:
        q_all = _to_bnsd(np.asarray(query, np.float64), in_layout, n)       # (B, N, Sq, D)
        batch, _, stored_q, _ = q_all.shape
    head_dim = q_all.shape[-1]
    decode = incremental_branch and not tnd and stored_q == 1 and query_rope is None
    if not tnd:
        q_lens = np.full(batch, stored_q, np.int64)
        q_starts = np.zeros(batch, np.int64)
        if actual_seq_lengths is not None and not decode:
            q_lens = _per_batch(actual_seq_lengths, batch).copy()
            if query_padding_size is not None:
                pad = max(int(np.asarray(query_padding_size).reshape(-1)[0]), 0)
                q_starts = stored_q - pad - q_lens
    qr_all = None
    if query_rope is not None:
        qr_all = np.asarray(query_rope, np.float64) if tnd else _to_bnsd(np.asarray(query_rope, np.float64),
                                                                          in_layout, n)

    # key windows per batch
    kv_padded = False
    if paged:
        kv_lens = _per_batch(actual_seq_lengths_kv, batch)
        kv_starts = np.zeros(batch, np.int64)
    elif tnd:
        kv_starts, kv_lens = _cumulative_windows(actual_seq_lengths_kv)
        k_all, v_all = np.asarray(key), np.asarray(value)                    # (T_kv, kvN, D)
        kr_all = None if key_rope is None else np.asarray(key_rope, np.float64)
    else:
        k_all, v_all = _to_bnsd(key, in_layout, kvn), _to_bnsd(value, in_layout, kvn)
        kr_all = None if key_rope is None else _to_bnsd(np.asarray(key_rope, np.float64), in_layout, kvn)
        stored_kv = k_all.shape[2]
        kv_lens = np.full(batch, stored_kv, np.int64)
        kv_starts = np.zeros(batch, np.int64)
        if actual_seq_lengths_kv is not None:
            kv_lens = _per_batch(actual_seq_lengths_kv, batch).copy()
            if kv_padding_size is not None:
                pad = max(int(np.asarray(kv_padding_size).reshape(-1)[0]), 0)
                kv_starts = stored_kv - pad - kv_lens
                kv_padded = True
    key_dq, value_dq = _antiquants(full_quant, np.asarray(key).dtype, kvn, head_dim, antiquant_scale,
                                   antiquant_offset, antiquant_mode, key_antiquant_scale, key_antiquant_offset,
                                   key_antiquant_mode,
                                   value_antiquant_scale, value_antiquant_offset, value_antiquant_mode)

    prefix_k = prefix_v = None
    prefix_len = 0
    if key_shared_prefix is not None:
        prefix_k = _to_bnsd(key_shared_prefix, in_layout, kvn)[0]          # (kvN, Sp, D)
        prefix_v = _to_bnsd(value_shared_prefix, in_layout, kvn)[0]
        prefix_len = prefix_k.shape[1]
        if actual_shared_prefix_len is not None:
            prefix_len = int(np.asarray(actual_shared_prefix_len).reshape(-1)[0])
        prefix_k, prefix_v = prefix_k[:, :prefix_len], prefix_v[:, :prefix_len]
        if key_dq is not None:
            prefix_k = key_dq(prefix_k, 0, np.arange(prefix_len))
            prefix_v = value_dq(prefix_v, 0, np.arange(prefix_len))

    if full_quant:
        deq1, qs1, deq2 = _float_scale(deq_scale1), _float_scale(quant_scale1), _float_scale(deq_scale2)
    sink = None if learnable_sink is None else np.asarray(learnable_sink, np.float64).reshape(-1)
    additive_mask = attn_mask is not None and np.asarray(attn_mask).dtype in (np.float16, np.float32,
                                                                             np.float64)

    out = np.zeros((q_all.shape[0], n, head_dim) if tnd else (batch, n, stored_q, head_dim))
    lse = np.full(out.shape[:-1], np.inf)
    computed = np.zeros(out.shape[:-1], bool)
    for b in range(batch):
        q_len, kv_len = int(q_lens[b]), int(kv_lens[b])
        q0, kv0 = int(q_starts[b]), int(kv_starts[b])
        if q_len <= 0 or (not tnd and q0 < 0) or kv0 < 0:
            continue
        # keys and values of the window: (kvN, kv_len, D)
        if paged:
            k = _gather_paged(key, block_table[b], kv_len, block_size, kvn)
            v = _gather_paged(value, block_table[b], kv_len, block_size, kvn)
            kr = None if key_rope is None else _gather_paged(key_rope, block_table[b], kv_len, block_size, kvn)
            positions = np.arange(kv_len)
        elif tnd:
            k = k_all[kv0:kv0 + kv_len].transpose(1, 0, 2)
            v = v_all[kv0:kv0 + kv_len].transpose(1, 0, 2)
            kr = None if kr_all is None else kr_all[kv0:kv0 + kv_len].transpose(1, 0, 2)
            positions = np.arange(kv_len)
        else:
            k, v = k_all[b, :, kv0:kv0 + kv_len], v_all[b, :, kv0:kv0 + kv_len]
            kr = None if kr_all is None else kr_all[b, :, kv0:kv0 + kv_len]
            positions = np.arange(kv0, kv0 + kv_len)
        if full_quant:
            k, v = k.astype(np.float64), v.astype(np.float64)
        elif key_dq is not None:
            k, v = key_dq(k, b, positions), value_dq(v, b, positions)
        else:
            k, v = k.astype(np.float64), v.astype(np.float64)
        columns = (positions if kv_padded else np.arange(kv_len)) + prefix_len
        if prefix_len:
            k = np.concatenate([prefix_k, k], axis=1)
            v = np.concatenate([prefix_v, v], axis=1)
            columns = np.concatenate([np.arange(prefix_len), columns])
            if kr is not None:
                raise NotImplementedError("rope with a shared prefix")
        total_kv = prefix_len + kv_len
        rows = np.arange(q0, q0 + q_len) if not tnd else np.arange(q_len)

        # which (i, j) are discarded, and the additive mask
        if decode:
            discard = np.zeros((1, total_kv), bool)
            add = None
            compressed = attn_mask is not None and sparse_mode in (2, 3, 4) and \
                np.asarray(attn_mask).shape[-2:] == (2048, 2048)
            if attn_mask is not None and not compressed:   # one row per batch, or one for every batch
                mask = np.asarray(attn_mask)
                rows_of_mask = mask.reshape(-1, mask.shape[-1])
                row = rows_of_mask[b if rows_of_mask.shape[0] > 1 else 0][columns]
                if additive_mask:
                    add = row.astype(np.float64)[None, :]
                else:
                    discard = (row != 0)[None, :]
        else:
            mode = sparse_mode
            pre, nxt = pre_tokens, next_tokens
            user_mask = attn_mask is not None and mode in (0, 1)
            if mode == 0 and (kv_padded or (query_padding_size is not None and actual_seq_lengths is not None)):
                pre, nxt = INT_MAX, INT_MAX
            discard = _band(mode, q_len, total_kv, pre, nxt, user_mask)
            add = None
            if user_mask:
                plane = _mask_plane(attn_mask, b)[np.ix_(rows, columns)]
                if additive_mask:
                    add = plane.astype(np.float64)
                else:
                    discard = discard | (plane != 0)

        for h in range(n):
            kh = h // group
            q = q_all[q0:q0 + q_len, h] if tnd else q_all[b, h, q0:q0 + q_len]
            raw = q @ k[kh].T
            if qr_all is not None:
                qr = qr_all[q0:q0 + q_len, h] if tnd else qr_all[b, h, q0:q0 + q_len]
                raw = raw + qr @ kr[kh].T
            scores = raw * (deq1 * scale_value if full_quant else scale_value)
            if pse_shift is not None:
                pse = np.asarray(pse_shift, np.float64)
                scores = scores + pse[b if pse.shape[0] > 1 else 0, h][np.ix_(rows, columns)]
            o, l, c = _attend(scores, v[kh], add, discard, None if sink is None else sink[h],
                              (qs1, deq2) if full_quant else None)
            if tnd:
                out[q0:q0 + q_len, h], lse[q0:q0 + q_len, h], computed[q0:q0 + q_len, h] = o, l, c
            else:
                out[b, h, q0:q0 + q_len], lse[b, h, q0:q0 + q_len], computed[b, h, q0:q0 + q_len] = o, l, c

    if quant_scale2 is not None:
        out = _post_quant(out, computed, quant_scale2, quant_offset2, n, head_dim, tnd)
    if tnd:
        return out, lse[..., None].astype(np.float32)
    return _from_bnsd(out, out_layout), lse[..., None].astype(np.float32)


def _post_quant(out, computed, scale, offset, n, d, tnd):
    """int8 output: sat(round_half_even(O * scale + offset)) per tensor or per (N, D) channel; rows not computed
    stay 0."""
    s = np.asarray(scale, np.float64).reshape(-1)
    o = np.zeros_like(s) if offset is None else np.asarray(offset, np.float64).reshape(-1)
    if s.size > 1:
        shape = (n, d) if tnd else (n, 1, d)
        s, o = s.reshape(shape), o.reshape(shape)
    y = np.clip(np.rint(out * s + o), -128, 127).astype(np.int8)
    y[~computed] = 0
    return y


# ---- the operators -------------------------------------------------------------------------------------------

def _lse_output(lse, flag):
    return lse if flag else np.zeros((1,), np.float32)


def prompt_flash_attention(query, key, value, attn_mask=None, actual_seq_lengths=None, actual_seq_lengths_kv=None,
                           pse_shift=None, deq_scale1=None, quant_scale1=None, deq_scale2=None, quant_scale2=None,
                           quant_offset2=None, num_heads=1, scale_value=1.0, pre_tokens=INT_MAX, next_tokens=0,
                           input_layout="BSH", num_key_value_heads=0, sparse_mode=0, inner_precise=1):
    """attention_out of ops.prompt_flash_attention."""
    del inner_precise
    out, _ = fused_attention(query, key, value, pse_shift=pse_shift, attn_mask=attn_mask,
                             actual_seq_lengths=actual_seq_lengths, actual_seq_lengths_kv=actual_seq_lengths_kv,
                             deq_scale1=deq_scale1, quant_scale1=quant_scale1, deq_scale2=deq_scale2,
                             quant_scale2=quant_scale2, quant_offset2=quant_offset2, num_heads=num_heads,
                             scale_value=scale_value, pre_tokens=pre_tokens, next_tokens=next_tokens,
                             input_layout=input_layout, num_key_value_heads=num_key_value_heads,
                             sparse_mode=sparse_mode, incremental_branch=False)
    return out


def fused_infer_attention_score(query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
                                actual_seq_lengths_kv=None, dequant_scale1=None, quant_scale1=None,
                                dequant_scale2=None, quant_scale2=None, quant_offset2=None, antiquant_scale=None,
                                antiquant_offset=None, key_antiquant_scale=None, key_antiquant_offset=None,
                                value_antiquant_scale=None, value_antiquant_offset=None, block_table=None,
                                query_padding_size=None, kv_padding_size=None, key_shared_prefix=None,
                                value_shared_prefix=None, actual_shared_prefix_len=None, num_heads=1, scale=1.0,
                                pre_tokens=INT_MAX, next_tokens=INT_MAX, input_layout="BSH",
                                num_key_value_heads=0, sparse_mode=0, inner_precise=1, block_size=0,
                                antiquant_mode=0, key_antiquant_mode=0, value_antiquant_mode=0,
                                softmax_lse_flag=False):
    """(attention_out, softmax_lse) of ops.fused_infer_attention_score; key/value as arrays or a list of one."""
    del inner_precise
    key = key[0] if isinstance(key, (list, tuple)) else key
    value = value[0] if isinstance(value, (list, tuple)) else value
    out, lse = fused_attention(
        query, key, value, pse_shift=pse_shift, attn_mask=atten_mask, actual_seq_lengths=actual_seq_lengths,
        actual_seq_lengths_kv=actual_seq_lengths_kv, deq_scale1=dequant_scale1, quant_scale1=quant_scale1,
        deq_scale2=dequant_scale2, quant_scale2=quant_scale2, quant_offset2=quant_offset2,
        antiquant_scale=antiquant_scale, antiquant_offset=antiquant_offset, key_antiquant_scale=key_antiquant_scale,
        key_antiquant_offset=key_antiquant_offset, value_antiquant_scale=value_antiquant_scale,
        value_antiquant_offset=value_antiquant_offset, block_table=block_table,
        query_padding_size=query_padding_size, kv_padding_size=kv_padding_size,
        key_shared_prefix=key_shared_prefix, value_shared_prefix=value_shared_prefix,
        actual_shared_prefix_len=actual_shared_prefix_len, num_heads=num_heads, scale_value=scale,
        pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=input_layout,
        num_key_value_heads=num_key_value_heads, sparse_mode=sparse_mode, block_size=block_size,
        antiquant_mode=antiquant_mode, key_antiquant_mode=key_antiquant_mode,
        value_antiquant_mode=value_antiquant_mode)
    return out, _lse_output(lse, softmax_lse_flag)


def fused_infer_attention_score_v2(query, key, value, *, query_rope=None, key_rope=None, pse_shift=None,
                                   atten_mask=None, actual_seq_lengths=None, actual_seq_lengths_kv=None,
                                   block_table=None, dequant_scale_key=None, dequant_offset_key=None,
                                   dequant_scale_value=None, dequant_offset_value=None, quant_scale_out=None,
                                   quant_offset_out=None, learnable_sink=None, key_shared_prefix=None,
                                   value_shared_prefix=None, actual_shared_prefix_len=None, num_query_heads=1,
                                   num_key_value_heads=0, softmax_scale=1.0, pre_tokens=INT_MAX,
                                   next_tokens=INT_MAX, input_layout="BSH", sparse_mode=0, block_size=0,
                                   key_quant_mode=0, value_quant_mode=0, return_softmax_lse=False, **unused):
    """(attention_out, softmax_lse) of fused_infer_attention_score_v2 (the quant modes 0 and 1 it supports;
    the dtype-override attributes do not change the math)."""
    out, lse = fused_attention(
        query, key, value, query_rope=query_rope, key_rope=key_rope, pse_shift=pse_shift, attn_mask=atten_mask,
        actual_seq_lengths=actual_seq_lengths, actual_seq_lengths_kv=actual_seq_lengths_kv,
        key_antiquant_scale=dequant_scale_key, key_antiquant_offset=dequant_offset_key,
        value_antiquant_scale=dequant_scale_value, value_antiquant_offset=dequant_offset_value,
        block_table=block_table, quant_scale2=quant_scale_out, quant_offset2=quant_offset_out,
        key_shared_prefix=key_shared_prefix, value_shared_prefix=value_shared_prefix,
        actual_shared_prefix_len=actual_shared_prefix_len, learnable_sink=learnable_sink,
        num_heads=num_query_heads, scale_value=softmax_scale, pre_tokens=pre_tokens, next_tokens=next_tokens,
        input_layout=input_layout, num_key_value_heads=num_key_value_heads, sparse_mode=sparse_mode,
        block_size=block_size, key_antiquant_mode=key_quant_mode, value_antiquant_mode=value_quant_mode)
    return out, _lse_output(lse, return_softmax_lse)
