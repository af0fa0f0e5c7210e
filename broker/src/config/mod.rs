//! Knative-compatible Broker/Trigger YAML → validated, typed [`Config`].
//!
//! [`load`] reads one file or every `.yaml`/`.yml` file of a directory (sorted by
//! name), each possibly multi-document. Documents of `apiVersion:
//! eventing.knative.dev/v1` and kind `Broker` or `Trigger` are understood; other kinds
//! are skipped with a notice. Every problem is reported at once, each naming the file,
//! the document, the object, the field and why ([`ConfigError`]).

mod ca_certs;
mod fields;
pub mod policy;
pub mod rate;
mod raw;
mod resolve;
mod triggers;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use crate::delivery::DeliverySpec;
use crate::filter::Filter;
pub use ca_certs::CaCerts;
use fields::{check_k8s_name, parse_delivery};
pub use fields::{is_k8s_name, parse_duration};
pub use policy::EventPolicy;
use raw::{RawBroker, RawTrigger};
pub use resolve::resolve_destination;
pub use triggers::{load_triggers, parse_triggers};

/// Annotation selecting per-trigger delivery order (Knative Kafka broker's name).
pub const ORDER_ANNOTATION: &str = "kafka.eventing.knative.dev/delivery.order";
/// Annotation bounding concurrent deliveries per trigger and partition.
pub const CONCURRENCY_ANNOTATION: &str = "triggerfish.dev/delivery.concurrency";
/// Default bound on concurrent deliveries per trigger and partition.
pub const DEFAULT_CONCURRENCY: usize = 100;
const MAX_CONCURRENCY: usize = 10_000;

/// Options that shape how a config is understood.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Kubernetes cluster domain used to resolve Service references.
    pub cluster_domain: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

/// A broker's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerId {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Broker name.
    pub name: String,
}

impl BrokerId {
    /// Builds an id.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> BrokerId {
        BrokerId {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Per-trigger delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOrder {
    /// Bounded concurrency, no order (default).
    Unordered,
    /// One in flight per partition key, in append order.
    Ordered,
}

/// A validated broker and its triggers.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Namespace and name.
    pub id: BrokerId,
    /// The broker's delivery (its own, or the default when it has none).
    pub delivery: std::sync::Arc<DeliverySpec>,
    /// Annotations as written.
    pub annotations: BTreeMap<String, String>,
    /// Labels as written (EventPolicy selectors match them).
    pub labels: BTreeMap<String, String>,
    /// The EventPolicies that apply to this broker (none: the default
    /// authorization mode decides), sorted by namespace and name.
    pub policies: Vec<std::sync::Arc<EventPolicy>>,
    /// The ingress's limit on events per second from all senders
    /// (`triggerfish.dev/rate-limit`).
    pub rate_limit: rate::RateSetting,
    /// The ingress's limit on events per second from each sender
    /// (`triggerfish.dev/sender-rate-limit`).
    pub sender_rate_limit: rate::RateSetting,
    /// Triggers bound to this broker, sorted by name. Shared: the dispatcher runs
    /// the very same `TriggerConfig` (a copy is about 0.5 KiB per trigger).
    pub triggers: Vec<std::sync::Arc<TriggerConfig>>,
}

/// A validated trigger.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// Trigger name (unique within the namespace).
    pub name: String,
    /// The broker it is bound to.
    pub broker: BrokerId,
    /// Compiled filter.
    pub filter: Filter,
    /// Resolved subscriber URL.
    pub subscriber: Url,
    /// The subscriber's `CACerts`: trusted for it besides the system's roots.
    pub subscriber_ca_certs: Option<CaCerts>,
    /// Effective delivery: the trigger's own, else its broker's.
    pub delivery: std::sync::Arc<DeliverySpec>,
    /// Delivery order.
    pub order: DeliveryOrder,
    /// Bound on concurrent deliveries (per partition).
    pub concurrency: usize,
    /// Annotations as written.
    pub annotations: BTreeMap<String, String>,
    /// A hash of the trigger's `spec` as written, so that a reload can tell a
    /// changed filter from an unchanged one without comparing compiled filters
    /// ([`TriggerConfig::same_as`]).
    pub spec_hash: u64,
}

impl TriggerConfig {
    /// Whether `other` runs exactly like `self`: same broker, spec (filter,
    /// subscriber), effective delivery (a broker's default included), order and
    /// concurrency. Annotations that change nothing else (`kubectl`'s
    /// `last-applied-configuration`) and metadata do not count.
    pub fn same_as(&self, other: &TriggerConfig) -> bool {
        self.name == other.name
            && self.broker == other.broker
            && self.spec_hash == other.spec_hash
            && self.subscriber == other.subscriber
            && self.subscriber_ca_certs == other.subscriber_ca_certs
            && self.delivery == other.delivery
            && self.order == other.order
            && self.concurrency == other.concurrency
    }
}

/// A validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Brokers sorted by id.
    pub brokers: Vec<BrokerConfig>,
    /// Every EventPolicy, sorted by namespace and name.
    pub policies: Vec<std::sync::Arc<EventPolicy>>,
    /// Things skipped or worth knowing (other kinds, triggers without a broker).
    pub notices: Vec<String>,
}

impl Config {
    /// Finds a broker.
    pub fn broker(&self, namespace: &str, name: &str) -> Option<&BrokerConfig> {
        self.brokers
            .iter()
            .find(|b| b.id.namespace == namespace && b.id.name == name)
    }
}

/// One problem in a config, located precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based document index within the file (0 when the file itself failed).
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: Option<String>,
    /// Dotted field path (may be empty).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            write!(f, "s")?;
        }
        write!(f, ")")?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

struct Ctx<'a> {
    file: &'a Path,
    document: usize,
    object: Option<String>,
    errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            document: self.document,
            object: self.object.clone(),
            field: field.to_owned(),
            reason: reason.into(),
        });
    }
}

/// Loads a file or a directory of YAML files.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Config, ConfigErrors> {
    read_and_parse(path, |sources| parse_sources(sources, opts))
}

/// Reads a file or every YAML file of a directory and hands the texts to `parse`;
/// unreadable files are reported along with whatever `parse` finds.
fn read_and_parse<T>(
    path: &Path,
    parse: impl FnOnce(&[(&Path, &str)]) -> Result<T, ConfigErrors>,
) -> Result<T, ConfigErrors> {
    let file_error = |file: PathBuf, reason: String| ConfigError {
        file,
        document: 0,
        object: None,
        field: String::new(),
        reason,
    };
    let files = list_files(path)
        .map_err(|reason| ConfigErrors(vec![file_error(path.to_path_buf(), reason)]))?;
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => errors.push(file_error(file, format!("cannot read: {e}"))),
        }
    }
    let refs: Vec<(&Path, &str)> = sources
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    match parse(&refs) {
        Ok(v) if errors.is_empty() => Ok(v),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Calls `f` with every non-empty YAML document of `sources`, its `apiVersion` and
/// `kind` (empty when missing) and a context for errors. A document that is not valid
/// YAML is reported and ends its file (the rest of the stream cannot be trusted).
fn for_each_document(
    sources: &[(&Path, &str)],
    errors: &mut Vec<ConfigError>,
    mut f: impl FnMut(serde_yaml_ng::Value, &str, &str, &mut Ctx<'_>),
) {
    for (file, text) in sources {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let mut ctx = Ctx {
                file,
                document: i + 1,
                object: None,
                errors: &mut *errors,
            };
            let value = match serde_yaml_ng::Value::deserialize(doc) {
                Ok(serde_yaml_ng::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    ctx.err("", format!("not valid YAML: {e}"));
                    break;
                }
            };
            let api = value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            let kind = value
                .get("kind")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned();
            f(value, &api, &kind, &mut ctx);
        }
    }
}

fn list_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| format!("cannot list directory: {e}"))? {
        let p = entry
            .map_err(|e| format!("cannot list directory: {e}"))?
            .path();
        let yaml = p
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml"));
        if yaml && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err("directory holds no .yaml or .yml files".to_owned());
    }
    Ok(files)
}

/// Parses config text (already read); `sources` pairs a display path with its text.
pub fn parse_sources(
    sources: &[(&Path, &str)],
    opts: &LoadOptions,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut notices = Vec::new();
    let mut brokers: BTreeMap<BrokerId, BrokerConfig> = BTreeMap::new();
    // (trigger, whether it has its own delivery, file, document)
    let mut triggers: Vec<(TriggerConfig, bool, PathBuf, usize)> = Vec::new();
    let mut policies: Vec<EventPolicy> = Vec::new();
    for_each_document(sources, &mut errors, |value, api, kind, ctx| {
        let where_ = format!("{}: document {}", ctx.file.display(), ctx.document);
        match (api, kind) {
            ("eventing.knative.dev/v1", "Broker") => {
                if let Some(b) = parse_broker(value, ctx, opts) {
                    if brokers.contains_key(&b.id) {
                        ctx.err("metadata.name", format!("broker {} is defined twice", b.id));
                    } else {
                        brokers.insert(b.id.clone(), b);
                    }
                }
            }
            (policy::API_VERSION, "EventPolicy") => {
                if let Some(p) = policy::parse_policy(value, ctx, &mut notices) {
                    if policies.iter().any(|q: &EventPolicy| q.namespace == p.namespace && q.name == p.name) {
                        ctx.err("metadata.name", format!("event policy {} is defined twice", p.id()));
                    } else {
                        policies.push(p);
                    }
                }
            }
            ("eventing.knative.dev/v1", "Trigger") => {
                if let Some((t, own_delivery)) = parse_trigger(value, ctx, opts) {
                    triggers.push((t, own_delivery, ctx.file.to_path_buf(), ctx.document));
                }
            }
            ("", _) | (_, "") => ctx.err(
                "",
                "not a Kubernetes object: apiVersion and kind are required",
            ),
            (api, kind) => notices.push(format!(
                "{where_}: skipped {kind} ({api}): not a Broker or Trigger of eventing.knative.dev/v1 or an EventPolicy of {}", policy::API_VERSION
            )),
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    for (mut trigger, own_delivery, file, document) in triggers {
        let where_ = format!("{}: document {document}", file.display());
        if !seen.insert((trigger.broker.namespace.clone(), trigger.name.clone())) {
            errors.push(ConfigError {
                file,
                document,
                object: Some(format!(
                    "Trigger {}/{}",
                    trigger.broker.namespace, trigger.name
                )),
                field: "metadata.name".into(),
                reason: "trigger is defined twice".into(),
            });
            continue;
        }
        match brokers.get_mut(&trigger.broker) {
            Some(b) => {
                // A trigger's delivery replaces its broker's as a whole.
                if !own_delivery {
                    trigger.delivery = b.delivery.clone();
                }
                b.triggers.push(std::sync::Arc::new(trigger));
            }
            None => notices.push(format!(
                "{where_}: trigger {}/{} refers to broker {} which is not defined; it receives nothing",
                trigger.broker.namespace, trigger.name, trigger.broker
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let policies: Vec<std::sync::Arc<EventPolicy>> =
        policies.into_iter().map(std::sync::Arc::new).collect();
    for p in &policies {
        for t in &p.to {
            if let policy::PolicyTarget::Broker(name) = t {
                if !brokers.contains_key(&BrokerId::new(p.namespace.clone(), name.clone())) {
                    notices.push(format!(
                        "EventPolicy {}: broker {}/{name} is not defined; that part of spec.to applies to nothing",
                        p.id(),
                        p.namespace
                    ));
                }
            }
        }
    }
    let mut brokers: Vec<BrokerConfig> = brokers.into_values().collect();
    for b in &mut brokers {
        b.triggers.sort_by(|a, b| a.name.cmp(&b.name));
        b.policies = policy::applying(&policies, &b.id.namespace, &b.id.name, &b.labels);
    }
    Ok(Config {
        brokers,
        policies,
        notices,
    })
}

fn deserialize<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    ctx: &mut Ctx<'_>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ctx.err(&path, e.into_inner().to_string());
            None
        }
    }
}

fn parse_broker(
    value: serde_yaml_ng::Value,
    ctx: &mut Ctx<'_>,
    opts: &LoadOptions,
) -> Option<BrokerConfig> {
    let raw: RawBroker = deserialize(value, ctx)?;
    let namespace = raw.metadata.namespace.unwrap_or_else(|| "default".into());
    let name = raw.metadata.name.unwrap_or_default();
    ctx.object = Some(format!("Broker {namespace}/{name}"));
    let before = ctx.errors.len();
    check_k8s_name(&namespace, true, "metadata.namespace", ctx);
    check_k8s_name(&name, false, "metadata.name", ctx);
    let delivery = match &raw.spec.delivery {
        Some(d) => parse_delivery(d, &namespace, "spec.delivery", ctx, opts),
        None => DeliverySpec::broker_default(),
    };
    let annotations = &raw.metadata.annotations;
    let rate_limit = rate::parse_setting(
        annotations,
        rate::RATE_LIMIT_ANNOTATION,
        rate::RATE_BURST_ANNOTATION,
        ctx,
    );
    let sender_rate_limit = rate::parse_setting(
        annotations,
        rate::SENDER_RATE_LIMIT_ANNOTATION,
        rate::SENDER_RATE_BURST_ANNOTATION,
        ctx,
    );
    (ctx.errors.len() == before).then(|| BrokerConfig {
        rate_limit,
        sender_rate_limit,
        id: BrokerId::new(namespace, name),
        delivery: delivery.into(),
        annotations: raw.metadata.annotations,
        labels: raw.metadata.labels,
        policies: Vec::new(),
        triggers: Vec::new(),
    })
}

/// Returns the trigger and whether it has a delivery of its own.
fn parse_trigger(
    value: serde_yaml_ng::Value,
    ctx: &mut Ctx<'_>,
    opts: &LoadOptions,
) -> Option<(TriggerConfig, bool)> {
    let spec_hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.get("spec").hash(&mut h);
        h.finish()
    };
    let raw: RawTrigger = deserialize(value, ctx)?;
    let namespace = raw.metadata.namespace.unwrap_or_else(|| "default".into());
    let name = raw.metadata.name.unwrap_or_default();
    ctx.object = Some(format!("Trigger {namespace}/{name}"));
    let before = ctx.errors.len();
    check_k8s_name(&namespace, true, "metadata.namespace", ctx);
    check_k8s_name(&name, false, "metadata.name", ctx);
    let spec = raw.spec;
    let broker = match (&spec.broker, &spec.broker_ref) {
        (Some(b), None) => b.clone(),
        (None, Some(r)) => {
            if r.namespace.as_deref().is_some_and(|ns| ns != namespace) {
                ctx.err(
                    "spec.brokerRef.namespace",
                    "cross-namespace broker references are not supported",
                );
            }
            r.name.clone().unwrap_or_default()
        }
        (Some(_), Some(_)) => {
            ctx.err("spec", "set exactly one of broker and brokerRef");
            String::new()
        }
        (None, None) => {
            ctx.err("spec.broker", "required");
            String::new()
        }
    };
    if !broker.is_empty() {
        check_k8s_name(&broker, false, "spec.broker", ctx);
    }
    let mut filter = Filter::match_all();
    if let Some(attrs) = spec.filter.as_ref().and_then(|f| f.attributes.as_ref()) {
        for key in attrs.keys() {
            let ok = key.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                ctx.err(
                    &format!("spec.filter.attributes.{key}"),
                    "attribute names must match ^[a-z][a-z0-9]*$",
                );
            }
        }
        filter = Filter::attributes(attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    if let Some(filters) = spec.filters.as_deref().filter(|f| !f.is_empty()) {
        // A non-empty `filters` overrides `filter.attributes` (Knative). Any invalid
        // part rejects the trigger: never skipped, never widened.
        match Filter::from_filters(filters) {
            Ok(f) => filter = f,
            Err(errors) => {
                for e in errors {
                    ctx.err(&format!("spec.{}", e.field), e.reason);
                }
            }
        }
    }
    let subscriber = resolve_destination(&spec.subscriber, &namespace, opts)
        .map_err(|reason| ctx.err("spec.subscriber", reason))
        .ok();
    let subscriber_ca_certs = ca_certs::parse_field(
        spec.subscriber.ca_certs.as_deref(),
        "spec.subscriber.CACerts",
        ctx,
    );
    let annotations = raw.metadata.annotations;
    let delivery = match &spec.delivery {
        Some(d) => parse_delivery(d, &namespace, "spec.delivery", ctx, opts),
        // Replaced by the broker's once the broker is known.
        None => DeliverySpec::broker_default(),
    };
    let order = match annotations.get(ORDER_ANNOTATION).map(String::as_str) {
        None | Some("unordered") => DeliveryOrder::Unordered,
        Some("ordered") => DeliveryOrder::Ordered,
        Some(other) => {
            ctx.err(
                &format!("metadata.annotations.{ORDER_ANNOTATION}"),
                format!("'{other}' is not 'ordered' or 'unordered'"),
            );
            DeliveryOrder::Unordered
        }
    };
    let concurrency = match annotations.get(CONCURRENCY_ANNOTATION) {
        None => DEFAULT_CONCURRENCY,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
            _ => {
                ctx.err(
                    &format!("metadata.annotations.{CONCURRENCY_ANNOTATION}"),
                    format!("'{v}' is not a whole number from 1 to {MAX_CONCURRENCY}"),
                );
                DEFAULT_CONCURRENCY
            }
        },
    };
    if ctx.errors.len() != before {
        return None;
    }
    let own_delivery = spec.delivery.is_some();
    Some((
        TriggerConfig {
            name,
            broker: BrokerId::new(namespace, broker),
            filter,
            subscriber: subscriber?,
            subscriber_ca_certs,
            delivery: delivery.into(),
            order,
            concurrency,
            annotations,
            spec_hash,
        },
        own_delivery,
    ))
}

#[cfg(test)]
mod tests;
