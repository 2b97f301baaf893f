"""The model update loop's training side: the lab's data (:mod:`.lab_data`), a candidate version trained from the
served weights (:mod:`.retrain` for the frame models, :mod:`.cell_retrain` and :mod:`.cell_data` for the cell
typer, ``make retrain``) and the gate against the served version on a locked test set
(:mod:`.gate`, ``make gate``). Promotion and rollback are the portal's (``portal.models_registry``), over
:mod:`serving.versions`."""
