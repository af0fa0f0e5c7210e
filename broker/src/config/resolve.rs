//! Destination resolution (Knative control-plane spec, "Destination Resolution").

use url::Url;

use super::raw::Destination;
use super::LoadOptions;

/// Resolves a `duckv1.Destination` to a URL: a `uri` alone must be absolute http(s);
/// a `ref` to a Kubernetes `Service` (core `v1` or Knative Serving) becomes
/// `http://<name>.<namespace>.svc.<cluster-domain>/`, and a `uri` given with it is
/// resolved relative to that.
pub fn resolve_destination(
    dest: &Destination,
    namespace: &str,
    opts: &LoadOptions,
) -> Result<Url, String> {
    let url = match (&dest.reference, &dest.uri) {
        (None, None) => return Err("set ref, uri or both".into()),
        (None, Some(uri)) => {
            Url::parse(uri).map_err(|e| format!("uri '{uri}' is not an absolute URL: {e}"))?
        }
        (Some(r), uri) => {
            let kind = r.kind.as_deref().unwrap_or("");
            let api = r.api_version.as_deref().unwrap_or("");
            let name = r.name.as_deref().unwrap_or("");
            if name.is_empty() {
                return Err("ref.name is required".into());
            }
            let ns = r.namespace.as_deref().unwrap_or(namespace);
            let supported =
                kind == "Service" && (api == "v1" || api.starts_with("serving.knative.dev/"));
            if !supported {
                return Err(format!(
                    "ref to {kind} ({api}) cannot be resolved here; supported are Service (v1) and Service (serving.knative.dev/v1), or give a uri"
                ));
            }
            let base = Url::parse(&format!("http://{name}.{ns}.svc.{}/", opts.cluster_domain))
                .map_err(|e| format!("ref {name}.{ns} does not form a valid URL: {e}"))?;
            match uri {
                Some(u) => base
                    .join(u)
                    .map_err(|e| format!("uri '{u}' cannot be resolved against {base}: {e}"))?,
                None => base,
            }
        }
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("'{url}' must be an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{url}' has no host"));
    }
    Ok(url)
}
