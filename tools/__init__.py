"""Offline tools for deployers (not part of the serving runtime): ``python -m tools.package``
(a training output dir -> a clean, checked model.tar.gz, converted for CTranslate2, optionally
uploaded to S3 by ``tools.upload``) and ``python -m tools.convert`` (a checkpoint -> a
CTranslate2 model)."""
