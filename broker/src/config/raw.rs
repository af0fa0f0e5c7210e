//! Serde shapes of the Knative `eventing.knative.dev/v1` Broker and Trigger documents,
//! as users write them. Fields under `spec` that Knative does not define are rejected
//! (a typo must not silently widen a filter or drop a retry policy); `metadata` and
//! `status` may hold anything Kubernetes puts there.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata` of any object.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A Broker document.
#[derive(Debug, Deserialize)]
pub struct RawBroker {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: BrokerSpec,
}

/// `Broker.spec`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// A ConfigMap reference picking the broker's backing channel in Knative; the
    /// channel is chosen by `--storage` here, so it is accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    pub config: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub delivery: Option<RawDelivery>,
}

/// A Trigger document.
#[derive(Debug, Deserialize)]
pub struct RawTrigger {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: TriggerSpec,
}

/// `Trigger.spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    pub broker: Option<String>,
    #[serde(rename = "brokerRef")]
    pub broker_ref: Option<KReference>,
    #[serde(default)]
    pub filter: Option<RawFilter>,
    #[serde(default)]
    pub filters: Option<Vec<serde_yaml_ng::Value>>,
    pub subscriber: Destination,
    #[serde(default)]
    pub delivery: Option<RawDelivery>,
}

/// `Trigger.spec.filter`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// A `duckv1.Destination`: a `ref`, a `uri`, or both (`uri` relative to the ref).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(rename = "ref")]
    pub reference: Option<KReference>,
    pub uri: Option<String>,
    #[serde(rename = "CACerts")]
    pub ca_certs: Option<String>,
    pub audience: Option<String>,
}

/// A `duckv1.KReference`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KReference {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub group: Option<String>,
    pub address: Option<String>,
}

/// A `DeliverySpec`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    #[serde(rename = "deadLetterSink")]
    pub dead_letter_sink: Option<Destination>,
    pub retry: Option<i64>,
    #[serde(rename = "backoffPolicy")]
    pub backoff_policy: Option<String>,
    #[serde(rename = "backoffDelay")]
    pub backoff_delay: Option<String>,
    pub timeout: Option<String>,
    #[serde(rename = "retryAfterMax")]
    pub retry_after_max: Option<String>,
    pub format: Option<String>,
}
