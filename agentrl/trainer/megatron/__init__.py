"""The Megatron-core training backend (GPU): :class:`~agentrl.trainer.megatron.backend.MegatronBackend`.

Modules: ``config`` (settings, Megatron flag pass-through), ``model`` (GPTModel from an HF config),
``attention`` (fused core attention), ``logprobs`` (chunked fused logprobs), ``packing`` (sequence
packing), ``hf_weights`` / ``hf_io`` (HF <-> Megatron weights), ``step_loss`` (the shared policy
loss on packed micro-batches), ``weight_sync`` (buckets and SGLang requests), ``backend``.
Importing this package imports nothing heavy; ``megatron-core`` is needed only by the modules that
build or run the model.
"""
