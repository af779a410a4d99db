"""Model kinds: what the stages need to know about an architecture, split by concern.

A kind (``model.kind`` in the config, listed once in :data:`registry.KINDS`) is a package
``kinds/<name>/`` with one module per concern it implements:

- ``network``: load, validate and build the sectioned model (every stage that runs it);
- ``data``: the task's inputs and held-out split (extraction, training, evaluation, features);
- ``training``: train it and measure its accuracies (rules train_model, import_model);
- ``interpretation``: module labels, extra feature evidence, tokenizer, thumbnails;
- ``ground_truth``: the planted answer (rule score_ground_truth).

Stages never name a kind: they import the accessor module of a concern
(``from interaction_basis.kinds import network``) and call ``network.get(cfg.kind)``, which
imports ``kinds/<kind>/network.py`` by name and fills the members the kind leaves out with the
concern's defaults. The workflow adds, for each accessor a stage imports, the experiment's
module of that concern (with its imports) to the stage's code inputs (``planning.stage_code``):
editing a kind's interpretation reruns its interpretation only, never its bases.

To add an architecture: write its network in ``models/``, the package ``kinds/<name>/`` (at
least ``network.py`` and ``data.py``), an entry in :data:`registry.KINDS`, and any settings
section of its own in ``config.ModelConfig``.
"""
