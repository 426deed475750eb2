"""``python -m glm_engine.cli``: the glm-engine command, as torchrun and the ``--tp`` launcher start each rank."""

from glm_engine.cli.main import main

main()
