"""The embedded demo model: a tiny Flan-T5-architecture model trained here on generated
biography questions. `demo/build_demo_model.py` builds it; `demo/model/` is shipped."""
