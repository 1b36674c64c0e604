"""numpy golden of flash_attention_score (FAS) and speed_fusion_attention (SFA), forward and backward.

Float64 math, one batch and one head at a time, written to be read rather than to be fast (the semantics are
those of docs/flash_attention_score.md and docs/speed_fusion_attention.md). Arrays come in as numpy (fp16/bf16
values already widened); results are float64, except softmax_max / softmax_sum which are float32 as the operators
return them. It does no validation: call it with inputs the operators accept.

Positions: i is a query row and j a key column inside the window of their batch (the whole stored length outside
TND). Sparse modes, masks, pse and the dropout mask all use these window-relative (i, j).

Dropout: the keep mask Z is either an explicit bit-packed drop_mask or generated from (seed, offset) by the
counter-based hash of the contract; generated_keep_mask / generated_keep_mask_varlen expose it so that a test can
check a kernel's dropout bit for bit.
"""
import math

import numpy as np

INT_MAX = 2147483647
FLT_MAX = float(np.finfo(np.float32).max)
PSE_COMPRESSED_ROWS = 1024


# ---- layouts -------------------------------------------------------------------------------------------------

def _to_bnsd(x, layout, heads):
    """A dense BSH / SBH / BNSD / BSND tensor -> (B, heads, S, D)."""
    x = np.asarray(x, np.float64)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(0, 2, 1, 3)
    if layout == "SBH":
        s, b, h = x.shape
        return x.reshape(s, b, heads, h // heads).transpose(1, 2, 0, 3)
    if layout == "BNSD":
        return x
    return x.transpose(0, 2, 1, 3)                      # BSND


def _from_bnsd(x, layout):
    """(B, N, S, D) -> the same tensor in `layout` (BSH, SBH, BNSD or BSND)."""
    b, n, s, d = x.shape
    if layout == "BSH":
        return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)
    if layout == "SBH":
        return x.transpose(2, 0, 1, 3).reshape(s, b, n * d)
    if layout == "BNSD":
        return x
    return x.transpose(0, 2, 1, 3)


class _Batches:
    """The per-batch windows of a query/key/value triple: for batch b, rows (heads, q_b, D) of the query and
    (kv heads, kv_b, D) of key and value, and the way back to the stored layout."""

    def __init__(self, query, key, value, head_num, layout, actual_seq_qlen, actual_seq_kvlen):
        self.layout = layout.upper()
        self.tnd = self.layout == "TND"
        if self.tnd:
            self.q = np.asarray(query, np.float64)                          # (T1, N1, D)
            self.k = np.asarray(key, np.float64)                            # (T2, N2, D)
            self.v = np.asarray(value, np.float64)
            q_ends = np.asarray(actual_seq_qlen, np.int64).reshape(-1)
            kv_ends = np.asarray(actual_seq_kvlen, np.int64).reshape(-1)
            self.q_starts = np.concatenate([[0], q_ends[:-1]])
            self.kv_starts = np.concatenate([[0], kv_ends[:-1]])
            self.q_lens = q_ends - self.q_starts
            self.kv_lens = kv_ends - self.kv_starts
            self.heads = self.q.shape[1]
            self.kv_heads = self.k.shape[1]
            self.total_rows = self.q.shape[0]
        else:
            self.heads = head_num
            d = _head_dim(query, head_num, self.layout)
            self.kv_heads = _heads_of(key, d, self.layout)
            self.q = _to_bnsd(query, self.layout, self.heads)               # (B, N1, S1, D)
            self.k = _to_bnsd(key, self.layout, self.kv_heads)              # (B, N2, S2, D)
            self.v = _to_bnsd(value, self.layout, self.kv_heads)
            batch, _, s1, _ = self.q.shape
            s2 = self.k.shape[2]
            self.q_lens = np.full(batch, s1, np.int64)
            self.kv_lens = np.full(batch, s2, np.int64)
            self.q_starts = np.arange(batch, dtype=np.int64) * s1           # the query row's token index b*S1+i
            self.kv_starts = np.zeros(batch, np.int64)
            self.total_rows = batch * s1
        self.batch = len(self.q_lens)
        self.group = self.heads // self.kv_heads

    def query_like(self, x):
        """A tensor in the query's layout (dy, the forward output) -> (B, N1, S1, D) or (T1, N1, D)."""
        return np.asarray(x, np.float64) if self.tnd else _to_bnsd(x, self.layout, self.heads)

    def rows(self, x, b):
        """Batch b's rows (N1, q_b, ...) of a (B, N1, S1, ...) or (T1, N1, ...) array."""
        if self.tnd:
            s = int(self.q_starts[b])
            return np.moveaxis(x[s:s + int(self.q_lens[b])], 1, 0)
        return x[b]

    def query(self, b):
        return self.rows(self.q, b)

    def key_value(self, b):
        if self.tnd:
            s = int(self.kv_starts[b])
            e = s + int(self.kv_lens[b])
            return self.k[s:e].transpose(1, 0, 2), self.v[s:e].transpose(1, 0, 2)
        return self.k[b], self.v[b]

    def empty_rows(self, extra_shape):
        """A zero array shaped like the query's per-row outputs: (B, N1, S1) + extra, or (T1, N1) + extra."""
        if self.tnd:
            return np.zeros(self.q.shape[:2] + extra_shape)
        return np.zeros(self.q.shape[:3] + extra_shape)

    def put_rows(self, target, b, rows):
        """Write per-batch rows (N1, q_b, ...) into a (B, N1, S1, ...) / (T1, N1, ...) array."""
        self.rows(target, b)[...] = rows

    def add_kv_rows(self, target, b, rows):
        """Add per-batch key rows (N2, kv_b, D) into a (B, N2, S2, D) / (T2, N2, D) array."""
        if self.tnd:
            s = int(self.kv_starts[b])
            target[s:s + int(self.kv_lens[b])] += rows.transpose(1, 0, 2)
        else:
            target[b] += rows

    def to_layout(self, bnsd_or_tnd):
        """A (B, N, S, D) result -> the call's layout; a TND one is already (T, N, D)."""
        return bnsd_or_tnd if self.tnd else _from_bnsd(bnsd_or_tnd, self.layout)


def _head_dim(query, head_num, layout):
    shape = np.shape(query)
    if layout in ("BSH", "SBH"):
        return shape[2] // head_num
    return shape[3]


def _heads_of(key, head_dim, layout):
    shape = np.shape(key)
    if layout in ("BSH", "SBH"):
        return shape[2] // head_dim
    return shape[1] if layout == "BNSD" else shape[2]


# ---- masks ---------------------------------------------------------------------------------------------------

def _discard_of_mode(mode, q_len, kv_len, pre, nxt, prefix_len, mask_given):
    """Discarded (i, j) of a sparse mode on a q_len x kv_len window, before the user mask (the sparse-mode table
    of docs/flash_attention_score.md)."""
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    d = kv_len - q_len
    none = np.zeros((q_len, kv_len), bool)
    if mode == 0:
        return (j - i > nxt) | (i - j > pre) if mask_given else none
    if mode == 1:
        return none
    if mode == 2:
        return j > i
    if mode == 3:
        return j > i + d
    if mode == 4:
        return (j - i > nxt + d) | (j - i < d - pre)
    if mode in (5, 6):
        return (j > i + d) & (j >= prefix_len)
    raise ValueError(f"sparse_mode {mode} is resolved per batch before this point")


def _batch_mode(mode, b, q_lens, kv_lens):
    """Modes 7 and 8 pick mode 3 / 2 per batch, and band mode 4 for one batch."""
    if mode == 7:
        with_rows = np.flatnonzero(np.asarray(q_lens) > 0)
        return 4 if with_rows.size and b == with_rows[-1] else 3
    if mode == 8:
        with_keys = np.flatnonzero(np.asarray(kv_lens) > 0)
        return 4 if with_keys.size and b == with_keys[0] else 2
    return mode


def _discard(batches, b, attn_mask, sparse_mode, pre_tokens, next_tokens, prefix):
    """(N1, q_b, kv_b) bool: which keys each query row of batch b may not see."""
    q_len, kv_len = int(batches.q_lens[b]), int(batches.kv_lens[b])
    mode = _batch_mode(sparse_mode, b, batches.q_lens, batches.kv_lens)
    user_mask = attn_mask is not None and mode in (0, 1, 5)
    prefix_len = int(np.asarray(prefix).reshape(-1)[b]) if mode in (5, 6) else 0
    plane = _discard_of_mode(mode, q_len, kv_len, pre_tokens, next_tokens, prefix_len, user_mask)
    discard = np.broadcast_to(plane, (batches.heads, q_len, kv_len))
    if user_mask:
        m = np.asarray(attn_mask) != 0
        if m.ndim == 2:
            per_head = np.broadcast_to(m[:q_len, :kv_len], (batches.heads, q_len, kv_len))
        else:
            per_head = np.broadcast_to(m[b if m.shape[0] > 1 else 0, :, :q_len, :kv_len],
                                       (batches.heads, q_len, kv_len))
        discard = discard | per_head
    return np.array(discard)


# ---- pse -----------------------------------------------------------------------------------------------------

def _pse_is_compressed(pse, pse_type, sparse_mode, batches):
    """The (B|1, N1, 1024, S2) compressed ALiBi rows: only with sparse_mode 2/3 and a query length other than
    1024 (TND: the longest batch)."""
    if pse is None or pse_type not in (0, 1) or sparse_mode not in (2, 3):
        return False
    longest = int(batches.q_lens.max()) if batches.batch else 0
    return np.shape(pse)[2] == PSE_COMPRESSED_ROWS and longest != PSE_COMPRESSED_ROWS


def _pse_index(pse_shape, compressed, b, h, q_len, kv_len):
    """Where the pse value of every (i, j) of batch b, head h lives: (batch index, head, rows, cols, valid)
    with rows/cols (q_len, kv_len) int arrays and `valid` False where the value is 0 (compressed, past S2)."""
    pb = b if pse_shape[0] > 1 else 0
    i = np.arange(q_len)[:, None] + np.zeros((1, kv_len), np.int64)
    j = np.arange(kv_len)[None, :] + np.zeros((q_len, 1), np.int64)
    if not compressed:
        return pb, h, i, j, np.ones((q_len, kv_len), bool)
    r = i + PSE_COMPRESSED_ROWS - q_len
    rows = np.where(r >= 0, r, 0)
    cols = np.where(r >= 0, j, j - r)                    # Toeplitz shift of row 0 above the stored rows
    valid = cols < pse_shape[3]
    return pb, h, rows, np.where(valid, cols, 0), valid


def _alibi(pse, pse_type, b, h, q_len, kv_len, q_start, kv_start):
    """The bias of pse_type 2 / 3 from the per-head slopes."""
    slopes = np.asarray(pse, np.float64)
    slope = slopes[b, h] if slopes.ndim == 2 else slopes.reshape(-1)[h]
    i = np.arange(q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    dist = np.abs(j - i - q_start + kv_start).astype(np.float64)
    return -slope * (dist if pse_type == 2 else np.sqrt(dist))


def _first(x, default=0):
    return default if x is None else int(np.asarray(x).reshape(-1)[0])


class _Scores:
    """S for one (batch, head) and the way its pse enters, shared by the forward and the backward."""

    def __init__(self, pse, pse_type, compressed, scale, q_start, kv_start):
        self.pse = None if pse is None else np.asarray(pse, np.float64)
        self.pse_type = pse_type
        self.compressed = compressed
        self.scale = scale
        self.q_start, self.kv_start = q_start, kv_start

    def tensor_pse(self):
        return self.pse is not None and self.pse_type in (0, 1)

    def __call__(self, q, k, b, h):
        """q (q_len, D), k (kv_len, D) -> S (q_len, kv_len)."""
        raw = q @ k.T
        q_len, kv_len = raw.shape
        if self.tensor_pse():
            pb, ph, rows, cols, valid = _pse_index(self.pse.shape, self.compressed, b, h, q_len, kv_len)
            shift = np.where(valid, self.pse[pb, ph][rows, cols], 0.0)
            return self.scale * (raw + shift) if self.pse_type == 1 else self.scale * raw + shift
        if self.pse is not None:
            return self.scale * raw + _alibi(self.pse, self.pse_type, b, h, q_len, kv_len, self.q_start,
                                             self.kv_start)
        return self.scale * raw

    def add_pse_grad(self, dpse, ds, b, h):
        """dS of one (batch, head) -> its contribution to d(pse), summed where several (b, i, j) read one
        element."""
        if not self.tensor_pse():
            return
        q_len, kv_len = ds.shape
        pb, ph, rows, cols, valid = _pse_index(self.pse.shape, self.compressed, b, h, q_len, kv_len)
        grad = ds * (self.scale if self.pse_type == 1 else 1.0)
        np.add.at(dpse[pb, ph], (rows[valid], cols[valid]), grad[valid])


# ---- dropout -------------------------------------------------------------------------------------------------

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_ROW_MUL = _U64(0xD1B54A32D192ED03)
_COL_MUL = _U64(0xA24BAED4963EE407)


def _mix64(x):
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _as_u64(value):
    """An int64 seed / offset (a Python int, numpy scalar or 1-element array) read as uint64."""
    return np.asarray(np.asarray(value, np.int64).reshape(-1)[:1]).view(np.uint64)


def keep_threshold(keep_prob):
    """floor(keep_prob * 2^24): a key is kept when the top 24 bits of its hash are below this."""
    return math.floor(float(keep_prob) * 2.0 ** 24)


def _generated_keep(seed, offset, keep_prob, heads, q_starts, q_lens, kv_lens, total_rows):
    """The generated mask per batch: a list of (heads, q_b, kv_b) bool."""
    threshold = _U64(keep_threshold(keep_prob))
    with np.errstate(over="ignore"):
        stream = _mix64(_as_u64(seed) * _GOLDEN + _as_u64(offset))                     # (1,)
        out = []
        for start, q_len, kv_len in zip(q_starts, q_lens, kv_lens):
            h = np.arange(heads, dtype=np.uint64)[:, None, None]
            t = (int(start) + np.arange(int(q_len), dtype=np.uint64))[None, :, None]
            row_key = _mix64(stream ^ ((h * _U64(total_rows) + t) * _ROW_MUL))
            j = np.arange(int(kv_len), dtype=np.uint64)[None, None, :]
            u = _mix64(row_key + (j + _U64(1)) * _COL_MUL)
            out.append((u >> _U64(40)) < threshold)
    return out


def generated_keep_mask(seed, offset, keep_prob, head_num, batch, q_len, kv_len):
    """The keep mask Z (True = keep) a BSH/SBH/BNSD/BSND call generates from (seed, offset): (B, N1, S1, S2)."""
    starts = np.arange(batch) * q_len
    per_batch = _generated_keep(seed, offset, keep_prob, head_num, starts, [q_len] * batch, [kv_len] * batch,
                                batch * q_len)
    return np.stack(per_batch) if batch else np.zeros((0, head_num, q_len, kv_len), bool)


def generated_keep_mask_varlen(seed, offset, keep_prob, head_num, actual_seq_qlen, actual_seq_kvlen):
    """The keep mask Z of a TND call: a list with one (N1, q_b, kv_b) bool array per batch."""
    q_ends = np.asarray(actual_seq_qlen, np.int64).reshape(-1)
    kv_ends = np.asarray(actual_seq_kvlen, np.int64).reshape(-1)
    q_starts = np.concatenate([[0], q_ends[:-1]])
    kv_starts = np.concatenate([[0], kv_ends[:-1]])
    return _generated_keep(seed, offset, keep_prob, head_num, q_starts, q_ends - q_starts, kv_ends - kv_starts,
                           int(q_ends[-1]) if len(q_ends) else 0)


def pack_drop_mask(keep):
    """Z -> the explicit uint8 drop_mask (bit k & 7 of byte k >> 3, LSB first, 1 = keep). A (B, N1, S1, S2)
    array gives (B, N1, S1, S2 // 8) (S2 must be a multiple of 8); a TND list of (N1, q_b, kv_b) gives the flat
    tensor of ceil(N1 * sum q_b kv_b / 8) bytes, the last one padded with zeros."""
    if isinstance(keep, (list, tuple)):
        bits = np.concatenate([np.asarray(z, bool).reshape(-1) for z in keep])
        return np.packbits(bits, bitorder="little")
    keep = np.asarray(keep, bool)
    if keep.shape[-1] % 8:
        raise ValueError(f"S2 = {keep.shape[-1]} is not a multiple of 8: the (B, N1, S1, S2 // 8) mask cannot hold it")
    return np.packbits(keep, axis=-1, bitorder="little")


def unpack_drop_mask(drop_mask, heads, q_lens, kv_lens):
    """An explicit drop_mask -> Z per batch (heads, q_b, kv_b) bool. Bit base_b + (h * q_b + i) * kv_b + j, with
    base_b = heads * sum_{b' < b} q_b' kv_b'; the non-TND (B, N1, S1, S2 // 8) tensor is that same bit order."""
    bits = np.unpackbits(np.asarray(drop_mask, np.uint8).reshape(-1), bitorder="little").astype(bool)
    out, base = [], 0
    for q_len, kv_len in zip(q_lens, kv_lens):
        n = heads * int(q_len) * int(kv_len)
        out.append(bits[base:base + n].reshape(heads, int(q_len), int(kv_len)))
        base += n
    return out


def _keep_masks(batches, keep_prob, drop_mask, seed, offset):
    """Z per batch, or None without dropout."""
    if keep_prob >= 1.0:
        return None
    if drop_mask is not None:
        return unpack_drop_mask(drop_mask, batches.heads, batches.q_lens, batches.kv_lens)
    return _generated_keep(seed, offset, keep_prob, batches.heads, batches.q_starts, batches.q_lens,
                           batches.kv_lens, batches.total_rows)


def dropout_numels(head_num, layout, query, actual_seq_qlen=None, actual_seq_kvlen=None, key=None):
    """SFA's numels: N1 * sum_b q_b * kv_b (B * N1 * S1 * S2 outside TND)."""
    batches = _Batches(query, key, key, head_num, layout, actual_seq_qlen, actual_seq_kvlen)
    return int(batches.heads * np.sum(batches.q_lens * batches.kv_lens))


# ---- forward and backward ------------------------------------------------------------------------------------

def _setup(query, key, value, head_num, input_layout, pse, pse_type, q_start_idx, kv_start_idx, sparse_mode,
           scale, actual_seq_qlen, actual_seq_kvlen):
    batches = _Batches(query, key, value, head_num, input_layout, actual_seq_qlen, actual_seq_kvlen)
    compressed = _pse_is_compressed(pse, pse_type, sparse_mode, batches)
    scores = _Scores(pse, pse_type, compressed, scale, _first(q_start_idx), _first(kv_start_idx))
    return batches, scores


def training_attention(query, key, value, *, head_num, input_layout="BSH", pse=None, pse_type=1,
                       q_start_idx=None, kv_start_idx=None, attn_mask=None, drop_mask=None, prefix=None,
                       actual_seq_qlen=None, actual_seq_kvlen=None, scale=1.0, keep_prob=1.0,
                       pre_tokens=INT_MAX, next_tokens=INT_MAX, sparse_mode=0, seed=0, offset=0):
    """The forward. Returns (attention_out float64 in the query's layout, softmax_max, softmax_sum), the two
    statistics float32 (B, N1, S1, 8) or (T1, N1, 8)."""
    batches, scores = _setup(query, key, value, head_num, input_layout, pse, pse_type, q_start_idx,
                             kv_start_idx, sparse_mode, scale, actual_seq_qlen, actual_seq_kvlen)
    keep = _keep_masks(batches, keep_prob, drop_mask, seed, offset)
    out = batches.empty_rows((batches.q.shape[-1],))
    row_max = batches.empty_rows(())
    row_sum = batches.empty_rows(())
    for b in range(batches.batch):
        q_all = batches.query(b)
        k_all, v_all = batches.key_value(b)
        discard = _discard(batches, b, attn_mask, sparse_mode, pre_tokens, next_tokens, prefix)
        o_b = np.zeros(q_all.shape)
        m_b = np.full(q_all.shape[:2], -FLT_MAX)
        l_b = np.full(q_all.shape[:2], FLT_MAX)
        for h in range(batches.heads):
            kh = h // batches.group
            s = scores(q_all[h], k_all[kh], b, h)
            for i in range(s.shape[0]):
                visible = ~discard[h, i]
                if not visible.any():
                    continue
                m = s[i, visible].max()
                e = np.where(visible, np.exp(np.where(visible, s[i], m) - m), 0.0)
                total = e.sum()
                p = e / total
                if keep is not None:
                    p = p * keep[b][h, i] / keep_prob
                o_b[h, i] = p @ v_all[kh]
                m_b[h, i], l_b[h, i] = m, total
        batches.put_rows(out, b, o_b)
        batches.put_rows(row_max, b, m_b)
        batches.put_rows(row_sum, b, l_b)
    stats = lambda x: np.repeat(x[..., None], 8, -1).astype(np.float32)
    return batches.to_layout(out), stats(row_max), stats(row_sum)


def training_attention_grad(query, key, value, dy, softmax_max, softmax_sum, attention_in, *, head_num,
                            input_layout="BSH", pse=None, pse_type=1, q_start_idx=None, kv_start_idx=None,
                            attn_mask=None, drop_mask=None, prefix=None, actual_seq_qlen=None,
                            actual_seq_kvlen=None, scale=1.0, keep_prob=1.0, pre_tokens=INT_MAX,
                            next_tokens=INT_MAX, sparse_mode=0, seed=0, offset=0):
    """The backward of the contract: P recomputed from the given softmax_max / softmax_sum, Dsum from the given
    forward output. Returns (dq, dk, dv, dpse) float64 in the shapes of query, key, value and pse (dpse (0,) when
    pse is None; zeros for the ALiBi slopes of pse_type 2 / 3)."""
    batches, scores = _setup(query, key, value, head_num, input_layout, pse, pse_type, q_start_idx,
                             kv_start_idx, sparse_mode, scale, actual_seq_qlen, actual_seq_kvlen)
    dy_all, o_all = batches.query_like(dy), batches.query_like(attention_in)
    m_all = np.asarray(softmax_max, np.float64)[..., 0]
    l_all = np.asarray(softmax_sum, np.float64)[..., 0]
    keep = _keep_masks(batches, keep_prob, drop_mask, seed, offset)

    dq = batches.empty_rows((batches.q.shape[-1],))
    dk = np.zeros(batches.k.shape)
    dv = np.zeros(batches.v.shape)
    dpse = np.zeros(np.shape(pse)) if pse is not None else np.zeros((0,))
    for b in range(batches.batch):
        q_all = batches.query(b)
        k_all, v_all = batches.key_value(b)
        do_b, o_b = batches.rows(dy_all, b), batches.rows(o_all, b)
        m_b, l_b = batches.rows(m_all, b), batches.rows(l_all, b)
        discard = _discard(batches, b, attn_mask, sparse_mode, pre_tokens, next_tokens, prefix)
        dq_b = np.zeros(q_all.shape)
        dk_b = np.zeros(k_all.shape)
        dv_b = np.zeros(v_all.shape)
        for h in range(batches.heads):
            kh = h // batches.group
            s = scores(q_all[h], k_all[kh], b, h)
            visible = ~discard[h]
            row_max = m_b[h][:, None]
            p = np.where(visible, np.exp(np.where(visible, s, row_max) - row_max), 0.0) / l_b[h][:, None]
            z = 1.0 if keep is None else keep[b][h] / keep_prob
            dv_b[kh] += (p * z).T @ do_b[h]
            dp = (do_b[h] @ v_all[kh].T) * z
            dsum = np.sum(do_b[h] * o_b[h], axis=1, keepdims=True)
            ds = p * (dp - dsum)
            dq_b[h] = scale * ds @ k_all[kh]
            dk_b[kh] += scale * ds.T @ q_all[h]
            scores.add_pse_grad(dpse, ds, b, h)
        batches.put_rows(dq, b, dq_b)
        batches.add_kv_rows(dk, b, dk_b)
        batches.add_kv_rows(dv, b, dv_b)
    return batches.to_layout(dq), batches.to_layout(dk), batches.to_layout(dv), dpse


# ---- the operators -------------------------------------------------------------------------------------------

def flash_attention_score(query, key, value, head_num, real_shift=None, drop_mask=None, padding_mask=None,
                          attn_mask=None, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, keep_prob=1.0,
                          scalar_value=1.0, pre_tokens=INT_MAX, next_tokens=INT_MAX, inner_precise=0,
                          input_layout="BSH", sparse_mode=0, seed=0, offset=0):
    """The FAS primitive's (softmax_max, softmax_sum, softmax_out, attention_out); seed / offset are the values
    of the generated inputs (used only when keep_prob < 1 without drop_mask)."""
    del padding_mask, inner_precise
    out, row_max, row_sum = training_attention(
        query, key, value, head_num=head_num, input_layout=input_layout, pse=real_shift, pse_type=1,
        attn_mask=attn_mask, drop_mask=drop_mask, prefix=prefix, actual_seq_qlen=actual_seq_qlen,
        actual_seq_kvlen=actual_seq_kvlen, scale=scalar_value, keep_prob=keep_prob, pre_tokens=pre_tokens,
        next_tokens=next_tokens, sparse_mode=sparse_mode, seed=seed, offset=offset)
    return row_max, row_sum, np.zeros((1,)), out


def speed_fusion_attention(query, key, value, head_num, input_layout, *, pse=None, padding_mask=None,
                           atten_mask=None, scale=1.0, keep_prob=1.0, pre_tokens=INT_MAX, next_tokens=INT_MAX,
                           inner_precise=0, prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None,
                           sparse_mode=0, gen_mask_parallel=True, sync=False, pse_type=1, q_start_idx=None,
                           kv_start_idx=None, seed=0, offset=0):
    """SFA's (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels) for the given seed and
    offset (SFA always generates its dropout mask)."""
    del padding_mask, inner_precise, gen_mask_parallel, sync
    out, row_max, row_sum = training_attention(
        query, key, value, head_num=head_num, input_layout=input_layout, pse=pse, pse_type=pse_type,
        q_start_idx=q_start_idx, kv_start_idx=kv_start_idx, attn_mask=atten_mask, prefix=prefix,
        actual_seq_qlen=actual_seq_qlen, actual_seq_kvlen=actual_seq_kvlen, scale=scale, keep_prob=keep_prob,
        pre_tokens=pre_tokens, next_tokens=next_tokens, sparse_mode=sparse_mode, seed=seed, offset=offset)
    numels = dropout_numels(head_num, input_layout, query, actual_seq_qlen, actual_seq_kvlen, key)
    return (out, row_max, row_sum, np.zeros((1,)), np.array([seed], np.int64), np.array([offset], np.int64),
            np.array([numels], np.int64))
