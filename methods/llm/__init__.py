"""What every LLM method shares, a module per concern (the methods themselves are ``methods/sft.py``, ...).

- :mod:`methods.llm.backbone`: ``load_backbone(name)`` (tiny random Qwen3, packaged SmolLM2 GGUF, a Hugging Face
  id or folder) and ``expand_vocabulary`` (SID tokens, markers, ``<pause>``; tied or untied embeddings).
- :mod:`methods.llm.prompts`: the study's texts: system prompt, SID histories, item descriptions, CPT corpus.
- :mod:`methods.llm.config`: settings shared by every LLM method, per profile (backbone, SIDs, CPT, batching).
- :mod:`methods.llm.stages`: stage caching keyed by content, ``Trainer``-based training, row-restricted CPT,
  SFT examples with target-only loss, and :class:`~methods.llm.stages.LLMRecipe`, which chains them.
"""
