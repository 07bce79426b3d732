"""Stage 1, inputs: read and validate the answers, build both contexts, tokenize, plan units.

Everything here runs before any model loads, so bad input costs a second: `data` (read,
validate), `templates` (context text), `tokenizer` (load, compare the pair), `plan` (tokenize,
cut units, find the shared prefix), `fingerprint` (what a store's numbers depend on).
"""
