"""The workload's one registration in a Kubernetes Secret, with a Lease as the cross-Pod lock.

Imported only when ``DCR_K8S_SECRET`` is set, so the default path starts no slower. Plain REST over
aiohttp (already a dependency): get, create and update of one Secret and one Lease do not justify a
generated client of the whole API. By layer, each module using only the ones above it:

    _values   typed reads of untrusted JSON (an API server's answer, a kubeconfig)
    _exec     exec credential plugins (client.authentication.k8s.io), run as kubectl runs them
    _token    a bearer token file, read and checked
    _kubeconfig  kubeconfig files read and merged (as kubectl does) into the fields of one KubeApi
    _config   KubeApi: where the API server is and how to authenticate (in-cluster files, a kubeconfig,
              credentials that rotate)
    _client   KubeClient: one request with its retries and checks; nothing but BootstrapError leaves it
    _lease    LeaseLock: leader election as client-go does it (unique holder, our own clock)
    _store    KubeStore: the Secret (and the Deployment to roll), holding the LeaseLock
    _reconcile  the Pod's file against the Secret: a three-way merge, newer state never replaced by older
    _aside    a Secret's broken registration set aside under a timestamped key, not obeyed
    _rollout  DCR_K8S_ROLLOUT, level-triggered, and the completed roll-out a retirement waits for
    _shared   run_shared: flow.run under the Lease, with the Secret as the workload's truth
    _events   record_event: a core/v1 Event on the Pod for a run's outcome, best effort
"""

from ..errors import AmbiguousWrite, InvalidSecret, LeaseLost, LockTimeout, StoreConflict
from ._client import KubeClient
from ._config import SERVICE_ACCOUNT_DIR, KubeApi, check_name
from ._events import record_event
from ._lease import LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD, LeaseLock, holder_identity
from ._rollout import credentials_digest
from ._shared import run_shared
from ._store import DATA_KEY, RETIRED_KEY, ROLLOUT_ANNOTATION, KubeStore

__all__ = [
    "DATA_KEY",
    "LEASE_DURATION",
    "RENEW_DEADLINE",
    "RETIRED_KEY",
    "RETRY_PERIOD",
    "ROLLOUT_ANNOTATION",
    "SERVICE_ACCOUNT_DIR",
    "AmbiguousWrite",
    "InvalidSecret",
    "KubeApi",
    "KubeClient",
    "KubeStore",
    "LeaseLock",
    "LeaseLost",
    "LockTimeout",
    "StoreConflict",
    "check_name",
    "credentials_digest",
    "holder_identity",
    "record_event",
    "run_shared",
]
