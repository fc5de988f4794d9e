"""Pre-ranking stage: AutoFAS feature and architecture search under a latency budget, and its baselines
(spec: `../shared/specs/autofas.md`; guide: `docs/preranking.md`).

- `data`: feature fields with fetch level and cost; request × candidate splits of a pre-ranking view.
- `latency`: the measured network-cost table, the differentiable expected latency, measured request latency.
- `autofas`: gates, MixOps, supernet, search and derivation. `student`: the request-split MLP student.
- `distill`: teacher guidance (KD losses, teacher-logit precomputation). `evaluate`: AUC, Overlap@K, recall.
- `cold`, `two_tower`, `distilled_mlp`: the baselines. `run`: `rankstack train|bench preranking`.
"""
