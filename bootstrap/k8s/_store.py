"""The workload's one registration in a Secret (and the Deployment it may roll), over one ``KubeClient``.

The registration is kept as the ``.dcr_client.json`` document under one data key
(``dcr_client.json``), byte-for-byte the file's format. Writes carry ``resourceVersion``: a stale
one is a ``StoreConflict`` (409) and the caller re-reads and reconciles. Other failures are a
``StorageError`` naming the Secret, the namespace and the RBAC verb that is missing.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import _secrets
from .._http import json_object
from ..errors import InvalidSecret, StoreConflict
from ..wait import Deadline, RetryPolicy
from ._client import ATTEMPT_TIMEOUT, MANAGED_BY, KubeClient, kept_metadata
from ._config import KubeApi, check_name
from ._lease import LeaseLock, holder_identity
from ._values import dict_or_empty

DATA_KEY = "dcr_client.json"
# In the same document, the registrations replaced by a rotation and kept for their grace: whichever Pod
# runs after the grace deletes them, so none outlives a Pod that died mid-grace.
RETIRED_KEY = "retired"
# The pod-template annotation that DCR_K8S_ROLLOUT sets: a change of its value rolls the Deployment out.
ROLLOUT_ANNOTATION = "dcr-bootstrap/credentials-hash"
# Where a registration that fails validation is kept for the operator, in the same Secret: KEY.broken-<time>.
BROKEN_SUFFIX = ".broken-"


class BrokenEntry(InvalidSecret):
    """The Secret's registration key holds no valid registration: it is set aside, not obeyed."""

    def __init__(self, message: str, document: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.document = document  # the JSON object, when the key held one


def _secret_values(data: object) -> list[str]:
    """The secret values of a registration document (and its retired ones) as we send it."""
    if not isinstance(data, dict):
        return []
    found = [v for k in ("client_secret", "registration_access_token") if isinstance(v := data.get(k), str)]
    for item in data.get(RETIRED_KEY) or []:
        found += _secret_values(item.get("registration") if isinstance(item, dict) else None)
    return found


class KubeStore:
    """The Secret; with ``lease``, the Lease that lets one Pod at a time register or update."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        secret: str,
        lease: str | None,
        *,
        policy: RetryPolicy | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        identity: str | None = None,
    ) -> None:
        self.client = KubeClient(api, namespace, policy=policy, attempt_timeout=attempt_timeout)
        self.api, self.namespace = api, self.client.namespace
        self.secret = check_name("Secret", secret)
        self.lease = check_name("Lease", lease) if lease is not None else None
        self.lock = LeaseLock(self.client, self.lease, identity or holder_identity()) if self.lease else None
        # Set once a Secret write has been sent: from then on only a re-read tells whether it landed.
        self.secret_written = False
        self._secret_obj: dict[str, Any] | None = None

    @classmethod
    def from_environment(
        cls,
        secret: str,
        lease: str | None = None,
        namespace: str | None = None,
        kubeconfig: Path | None = None,
        *,
        allow_http: bool = False,
        policy: RetryPolicy | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        context: str | None = None,
    ) -> KubeStore:
        """In-cluster config when running in a Pod, else ``kubeconfig`` (or ``$KUBECONFIG``, at ``context`` if
        given); checked before use."""
        api = KubeApi.from_environment(kubeconfig, context).check(allow_http=allow_http)
        return cls(
            api, namespace or api.default_namespace, secret, lease, policy=policy, attempt_timeout=attempt_timeout
        )

    async def __aenter__(self) -> KubeStore:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.__aexit__(exc_type, exc, tb)

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.secret}"

    async def load(self, *, budget: float | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """The registration (as the file's dict) and the Secret's resourceVersion; (None, rv|None) if none."""
        status, obj = await self.client.call("GET", "secret", self.secret, "get", accept=(404,), budget=budget)
        if status == 404:
            self._secret_obj = None
            return None, None
        rv = self.client.resource_version(obj, "secret", self.secret)
        self._secret_obj = obj
        data = obj.get("data")
        if data is not None and not isinstance(data, dict):
            raise InvalidSecret(f"Secret {self.namespace}/{self.secret} has data that is not a mapping")
        raw = (data or {}).get(DATA_KEY)
        return (self._decode(raw) if raw else None), rv

    def _decode(self, raw: object) -> dict[str, Any]:
        try:
            data = json_object(base64.b64decode(str(raw), validate=True))
        except ValueError:  # not base64
            data = None
        if data is None:
            raise BrokenEntry(f"Secret {self.namespace}/{self.secret} key {DATA_KEY} is not valid JSON (a JSON object)")
        return data

    def encode(self, data: dict[str, Any]) -> str:
        """The value of our key for ``data``, and every secret in it registered for masking in that form
        first: an API server that echoes a refused request body (a 422's message) prints none of them."""
        encoded = base64.b64encode(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n").decode()
        _secrets.register(*_secret_values(data))
        _secrets.register_embedded(*_secret_values(data))
        _secrets.register(encoded)
        return encoded

    async def save(self, data: dict[str, Any], resource_version: str | None) -> str:
        """Create (rv None) or replace (rv given) the Secret; StoreConflict if someone else wrote first."""
        encoded = self.encode(data)
        self.secret_written = True
        if resource_version is None:
            metadata = {"name": self.secret, "namespace": self.namespace, "labels": dict(MANAGED_BY)}
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata}
            body["data"] = {DATA_KEY: encoded}
            status, obj = await self.client.call("POST", "secret", self.secret, "create", body, accept=(409,))
            if status == 409:
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} already exists")
        else:
            body = self._updated(encoded, resource_version)
            status, obj = await self.client.call("PUT", "secret", self.secret, "update", body, accept=(404, 409))
            if status in (404, 409):
                raise StoreConflict(f"Secret {self.namespace}/{self.secret} changed since it was read")
        rv = self.client.resource_version(obj, "secret", self.secret)
        self._secret_obj = obj
        return rv

    async def set_aside(self, stamp: str) -> tuple[str, str]:
        """Move our key's value, as last read, to ``KEY.broken-<stamp>`` in the same Secret (for the operator)
        with the resourceVersion read. Returns the new key and version; a 409 is a ``StoreConflict``."""
        kept = f"{DATA_KEY}{BROKEN_SUFFIX}{stamp}"
        read = dict_or_empty((self._secret_obj or {}).get("metadata")).get("resourceVersion")
        body = self._updated(None, str(read))
        data = dict_or_empty(body.get("data"))
        body["data"] = {k: v for k, v in data.items() if k != DATA_KEY} | {kept: data.get(DATA_KEY)}
        _secrets.register(str(data.get(DATA_KEY)))  # sent again: an echo of it is masked whole
        self.secret_written = True
        status, answer = await self.client.call("PUT", "secret", self.secret, "update", body, accept=(404, 409))
        if status in (404, 409):
            raise StoreConflict(f"Secret {self.namespace}/{self.secret} changed since it was read")
        rv = self.client.resource_version(answer, "secret", self.secret)
        self._secret_obj = answer
        return kept, rv

    def _updated(self, encoded: str | None, resource_version: str) -> dict[str, Any]:
        """The Secret as last read with only our key changed: other keys, labels (a managed-by that Helm or
        another tool set is theirs: ours is added only where none is), annotations, ownerReferences and
        finalizers survive (a PUT replaces the whole object)."""
        obj = copy.deepcopy(self._secret_obj) if self._secret_obj else {}
        obj.update(apiVersion="v1", kind="Secret")
        obj.setdefault("type", "Opaque")
        obj["metadata"] = kept_metadata(obj, self.secret, self.namespace, resource_version)
        obj["data"] = {**dict_or_empty(obj.get("data")), **({DATA_KEY: encoded} if encoded is not None else {})}
        return obj

    async def roll_out(self, deployment: str, digest: str) -> None:
        """Set the pod template's credentials annotation to ``digest``: the Deployment rolls its Pods."""
        check_name("Deployment", deployment)
        patch = {"spec": {"template": {"metadata": {"annotations": {ROLLOUT_ANNOTATION: digest}}}}}
        await self.client.call("PATCH", "deployment", deployment, "patch", patch)

    async def mark(self, deployment: str, digest: str) -> None:
        """Note on the Deployment itself (not its template: nothing rolls) the credentials its Pods started
        with before any roll-out of ours: the first registration, which the Pods starting with it read."""
        check_name("Deployment", deployment)
        patch = {"metadata": {"annotations": {ROLLOUT_ANNOTATION: digest}}}
        await self.client.call("PATCH", "deployment", deployment, "patch", patch)

    async def deployment(self, deployment: str) -> dict[str, Any]:
        """The Deployment as the API server has it (spec and status), to judge its roll-out."""
        check_name("Deployment", deployment)
        return (await self.client.call("GET", "deployment", deployment, "get"))[1]

    # The Lease, for callers that hold it by hand (tests, tools): ``run_shared`` uses ``lock`` itself.

    async def acquire(self, holder: str | None = None, timeout: float = 30.0) -> bool:  # noqa: ASYNC109
        """Hold the Lease (as ``holder``, when given) within ``timeout`` s; True if another holder made us wait."""
        if self.lock is None:
            return False
        if holder is not None:
            self.lock.identity = holder
        return await self.lock.acquire(Deadline(timeout))

    async def release(self) -> None:
        if self.lock is not None:
            await self.lock.release()
