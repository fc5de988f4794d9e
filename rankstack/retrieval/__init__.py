"""Stage 1 of the cascade: retrieval (spec: ../shared/specs/geogr.md; guide: docs/retrieval.md).

GeoGR's first layer: the geo-aware semantic-ID tokenizer (`semantic_ids`), the SID prefix trie and the
trie-constrained beam search on tensors (`trie`, `decode`), the non-generative baselines (`baselines`) and the one
evaluator they share (`evaluate`), over next-POI datasets read by `data`; `run` drives them from YAML configs.
The LM stage (CPT, SFT, EM refinement) is not implemented yet.
"""
