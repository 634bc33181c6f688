"""`python -m broker_config.contexts`: refresh the served copies of the shipped @context files."""

from broker_config.contexts import CONTEXTS_DIR, SERVED_FILES, sync_contexts

written = sync_contexts()
print(f"{len(written)} of {len(SERVED_FILES)} @context files updated in {CONTEXTS_DIR}: {', '.join(written) or 'none'}")
