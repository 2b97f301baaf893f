"""Domain actions: every write to the portal's data goes through here, one module per domain (the layout
of Zulip's ``zerver/actions``). Callers import the module they need; this package exports nothing.

Each action runs inside ``transaction.atomic`` and adds its audit row (portal.audit.registry) in the same
transaction, so a change without its audit row (or the reverse) cannot be committed; a refused write
raises and leaves an audit row of its own (:func:`portal.actions.events.log_refusal`).

- ``events``: reads, auth events and refusals (audit rows only);
- ``accounts``: self-registration, password changes;
- ``patients``: patients and specimens;
- ``uploads``: images committed with their analyses and their queued jobs (portal.jobs);
- ``outcomes``: a job's final outcome, the model server's answer parsed and stored (called by portal.jobs);
- ``cells``: a technologist's reclassified or added cells;
- ``signoff``: the reviewer's sign-off of an image;
- ``specimen``: reads of the specimen's summary, and its sign-off.

Dependencies run one way: views, the API and admin -> actions -> portal.jobs (the pipeline: enqueue,
claim, call, retry) -> actions.outcomes (store); portal.jobs imports no other action, and no action
imports a view.
"""
