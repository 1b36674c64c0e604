"""numpy golden of advance_step_flashattn (docs/advance_step_flashattn.md): returns updated copies of the four
state arrays (input_tokens, input_positions, seq_lens, slot_mapping); the inputs are left as they are."""
import numpy as np


def advance_step_flashattn(input_tokens, sampled_token_ids, input_positions, seq_lens, slot_mapping, block_tables,
                           num_seqs, num_queries, block_size):
    tokens, positions = np.array(input_tokens), np.array(input_positions)
    lens, slots = np.array(seq_lens), np.array(slot_mapping)
    sampled, tables = np.asarray(sampled_token_ids), np.asarray(block_tables)
    for q in range(num_queries):
        pos = int(lens[q])
        tokens[q] = sampled[q, 0]
        positions[q] = pos
        lens[q] = pos + 1
        slots[q] = int(tables[q, pos // block_size]) * block_size + pos % block_size
    for q in range(num_queries, num_seqs):
        tokens[q] = 0
        positions[q] = 0
        slots[q] = -1
    return tokens, positions, lens, slots
