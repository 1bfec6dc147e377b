"""Beyond one machine: batch embedding and zero-shot classification on Ray Data
(:mod:`clip_rt.scale.ray`, needs ``pip install 'clip-rt[ray]'``).

Nothing here is imported by ``import clip_rt``; Ray itself is imported only when a function of
:mod:`clip_rt.scale.ray` runs. Parquet output and resume live in :mod:`clip_rt.scale.parts`
(pyarrow only), the per-actor work in :mod:`clip_rt.scale.actors` (no Ray import at all), so
both are testable without a cluster.
"""
