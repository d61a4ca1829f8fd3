"""Offline tools for deployers (not part of the serving runtime): ``python -m tools.package``
(a training output dir -> a clean model.tar.gz) and ``python -m tools.convert`` (a checkpoint
-> a CTranslate2 model)."""
