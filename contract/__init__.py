"""The SageMaker hosting contract, kept once for both stacks: every setting (``settings``), the
log format (``logs``), and what each path answers (``routes``). Both stacks and nginx derive
from here; ``docs/DESIGN.md`` maps each SageMaker requirement to its place."""
