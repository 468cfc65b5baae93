//! What the API server does to objects on their way in: metadata it owns
//! (uid, creationTimestamp, resourceVersion), subresource rules, the Service
//! defaults and allocations (clusterIP, nodePorts, healthCheckNodePort), and
//! its errors as `Status` objects.

use std::{
    collections::BTreeSet,
    ops::RangeInclusive,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use super::{kinds::Kind, store::Key};

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// An error as the API server reports it: an HTTP code and a `Status` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn not_found((kind, _, name): &Key) -> Self {
        let message = format!("{} \"{name}\" not found", kind.plural());
        Self::new(404, "NotFound", message)
    }

    pub fn already_exists((kind, _, name): &Key) -> Self {
        let message = format!("{} \"{name}\" already exists", kind.plural());
        Self::new(409, "AlreadyExists", message)
    }

    pub fn conflict((kind, _, name): &Key) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.plural()
        );
        Self::new(409, "Conflict", message)
    }

    pub fn expired(requested: u64, oldest: u64) -> Self {
        let message = format!("too old resource version: {requested} ({oldest})");
        Self::new(410, "Expired", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn unsupported(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(code, reason, message)
    }

    /// The `Status` object the real server sends.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Stamps a new object with what the server owns; returns its name.
pub fn prepare_create(kind: Kind, namespace: &str, object: &mut Value) -> Result<String, ApiError> {
    check_type(kind, object)?;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::invalid("metadata.name: Required value: name is required"))?
        .to_owned();
    let metadata = &mut object["metadata"];
    if kind.namespaced() {
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if given != namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => metadata["namespace"] = json!(namespace),
        }
    } else if let Some(map) = metadata.as_object_mut() {
        map.remove("namespace");
    }
    let uid = NEXT_UID.fetch_add(1, Ordering::Relaxed);
    metadata["uid"] = json!(format!("{uid:08x}-0000-4000-8000-{uid:012x}"));
    metadata["creationTimestamp"] = json!(timestamp(SystemTime::now()));
    if kind == Kind::Service {
        // Status is the controllers' to write, through the subresource.
        object["status"] = json!({ "loadBalancer": {} });
    }
    Ok(name)
}

/// Applies the subresource rules to an update: the main resource keeps the
/// stored status, the status subresource keeps everything else.
pub fn prepare_update(
    kind: Kind,
    old: &Value,
    new: &mut Value,
    status: bool,
) -> Result<(), ApiError> {
    check_type(kind, new)?;
    if new.pointer("/metadata/name") != old.pointer("/metadata/name") {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    if status {
        let status = new.get("status").cloned().unwrap_or(json!({}));
        *new = old.clone();
        new["status"] = status;
        return Ok(());
    }
    for field in ["uid", "creationTimestamp", "namespace", "resourceVersion"] {
        match old["metadata"].get(field) {
            Some(value) => new["metadata"][field] = value.clone(),
            None => {
                if let Some(map) = new["metadata"].as_object_mut() {
                    map.remove(field);
                }
            }
        }
    }
    if kind.has_status() {
        new["status"] = old.get("status").cloned().unwrap_or(json!({}));
    }
    Ok(())
}

/// Equal but for the resourceVersion: such a write changes nothing. Gives
/// `new` `old`'s resourceVersion (which a write replaces).
pub fn same(old: &Value, new: &mut Value) -> bool {
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    *old == *new
}

/// `apiVersion` and `kind` must name the resource (or be left out).
fn check_type(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    if !object.is_object() || !object.get("metadata").is_some_and(Value::is_object) {
        return Err(ApiError::bad_request(
            "the body is not an object with metadata",
        ));
    }
    for (field, want) in [("apiVersion", kind.api_version()), ("kind", kind.name())] {
        match object.get(field).and_then(Value::as_str) {
            Some(given) if given != want => {
                return Err(ApiError::bad_request(format!(
                    "{field} {given:?} does not match the resource ({want:?})"
                )));
            }
            _ => object[field] = json!(want),
        }
    }
    Ok(())
}

/// RFC 3339 in UTC, to the second, as metadata timestamps are.
fn timestamp(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The cluster's Service IP families, primary first: the fake is a
/// dual-stack cluster, as `--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/112`
/// makes one.
const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];
const POLICIES: [&str; 3] = ["PreferDualStack", "RequireDualStack", "SingleStack"];

/// The Service IP and NodePort allocators.
pub struct Allocations {
    node_ports: RangeInclusive<u16>,
    used: BTreeSet<u16>,
    /// Where the next search for a free NodePort starts, so that allocating
    /// thousands stays cheap.
    cursor: u16,
    next_cluster_ip: u32,
    next_cluster_ipv6: u128,
}

impl Allocations {
    pub fn new(node_ports: RangeInclusive<u16>) -> Self {
        Self {
            cursor: *node_ports.start(),
            node_ports,
            used: BTreeSet::new(),
            // 10.96.0.1 is the `kubernetes` Service's.
            next_cluster_ip: u32::from_be_bytes([10, 96, 0, 2]),
            next_cluster_ipv6: u128::from_be_bytes([
                0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ]),
        }
    }

    /// Fills in a Service's defaults and allocations, as the real server does
    /// on create and update; other kinds pass untouched.
    pub fn admit(
        &mut self,
        kind: Kind,
        service: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if kind != Kind::Service {
            return Ok(());
        }
        let spec = &mut service["spec"];
        if !spec.is_object() {
            *spec = json!({});
        }
        let type_ = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
        for (field, value) in [
            ("type", json!(type_)),
            ("sessionAffinity", json!("None")),
            ("internalTrafficPolicy", json!("Cluster")),
        ] {
            if spec.get(field).is_none() {
                spec[field] = value;
            }
        }
        let old_spec = old.map(|old| &old["spec"]);
        self.assign_cluster_ips(spec, old_spec)?;
        let external = matches!(type_.as_str(), "NodePort" | "LoadBalancer");
        let local = external && spec["externalTrafficPolicy"].as_str() == Some("Local");
        if external && spec.get("externalTrafficPolicy").is_none() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        if type_ == "LoadBalancer" && spec.get("allocateLoadBalancerNodePorts").is_none() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
        if !external && let Some(map) = spec.as_object_mut() {
            // Fields only a NodePort or LoadBalancer Service has.
            for field in ["externalTrafficPolicy", "allocateLoadBalancerNodePorts"] {
                map.remove(field);
            }
        }
        if type_ != "LoadBalancer"
            && let Some(map) = spec.as_object_mut()
        {
            map.remove("loadBalancerClass");
        }
        let before = old.map(node_ports).unwrap_or_default();
        self.assign_node_ports(spec, old_spec, external, local, &before)?;
        let after = node_ports(service);
        self.used.retain(|port| !before.contains(port));
        self.used.extend(after);
        Ok(())
    }

    pub fn release(&mut self, kind: Kind, object: &Value) {
        if kind == Kind::Service {
            for port in node_ports(object) {
                self.used.remove(&port);
            }
        }
    }

    /// Resolves `ipFamilyPolicy` and `ipFamilies` as a dual-stack cluster
    /// does, and gives the Service a cluster IP of each family, keeping those
    /// it had.
    fn assign_cluster_ips(
        &mut self,
        spec: &mut Value,
        old_spec: Option<&Value>,
    ) -> Result<(), ApiError> {
        let (policy, families) = ip_families(spec, old_spec)?;
        let old_ips = old_spec
            .and_then(|s| s["clusterIPs"].as_array())
            .cloned()
            .unwrap_or_default();
        let cluster_ips: Vec<String> = families
            .iter()
            .map(|family| {
                let kept = old_ips.iter().filter_map(Value::as_str).find(|ip| {
                    let is_v6 = ip.contains(':');
                    is_v6 == (family == "IPv6")
                });
                kept.map_or_else(|| self.cluster_ip(family), str::to_owned)
            })
            .collect();
        spec["ipFamilyPolicy"] = json!(policy);
        spec["ipFamilies"] = json!(families);
        spec["clusterIP"] = json!(cluster_ips[0]);
        spec["clusterIPs"] = json!(cluster_ips);
        Ok(())
    }

    fn cluster_ip(&mut self, family: &str) -> String {
        if family == "IPv6" {
            let ip = std::net::Ipv6Addr::from(self.next_cluster_ipv6);
            self.next_cluster_ipv6 += 1;
            return ip.to_string();
        }
        let ip = std::net::Ipv4Addr::from(self.next_cluster_ip);
        self.next_cluster_ip += 1;
        ip.to_string()
    }

    /// Ports keep (or get, unless a LoadBalancer asks for none) a nodePort on
    /// NodePort and LoadBalancer Services and lose it on others; a Local LoadBalancer also gets a healthCheckNodePort.
    /// Ports asked for are claimed before any is allocated, so that an
    /// allocation never takes one a later port asks for.
    fn assign_node_ports(
        &mut self,
        spec: &mut Value,
        old_spec: Option<&Value>,
        external: bool,
        local: bool,
        mine: &BTreeSet<u16>,
    ) -> Result<(), ApiError> {
        let old_ports = old_spec
            .and_then(|s| s["ports"].as_array())
            .cloned()
            .unwrap_or_default();
        let mut ports = spec["ports"]
            .as_array_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for port in &mut ports {
            if port.get("protocol").is_none() {
                port["protocol"] = json!("TCP");
            }
            if port.get("targetPort").is_none() {
                port["targetPort"] = port["port"].clone();
            }
            let kept = old_ports
                .iter()
                .find(|old| old["port"] == port["port"] && old["protocol"] == port["protocol"])
                .and_then(|old| old["nodePort"].as_u64());
            match port.get("nodePort").and_then(Value::as_u64).or(kept) {
                Some(node_port) if external => port["nodePort"] = json!(node_port),
                _ => {
                    if let Some(map) = port.as_object_mut() {
                        map.remove("nodePort");
                    }
                }
            }
        }
        let health = local && spec.get("type").and_then(Value::as_str) == Some("LoadBalancer");
        let wanted_health = spec["healthCheckNodePort"]
            .as_u64()
            .or_else(|| old_spec.and_then(|s| s["healthCheckNodePort"].as_u64()));
        // A LoadBalancer with `allocateLoadBalancerNodePorts: false` keeps the
        // nodePorts asked for and gets no others.
        let allocate = spec["type"] != json!("LoadBalancer")
            || spec["allocateLoadBalancerNodePorts"] != json!(false);
        let mut fields: Vec<(String, &mut Value)> = Vec::new();
        for (index, port) in ports.iter_mut().enumerate() {
            if external && (allocate || port.get("nodePort").is_some()) {
                fields.push((
                    format!("spec.ports[{index}].nodePort"),
                    &mut port["nodePort"],
                ));
            }
        }
        let mut health_port = wanted_health.map_or(Value::Null, |port| json!(port));
        if health {
            fields.push(("spec.healthCheckNodePort".to_owned(), &mut health_port));
        }
        let mut taken = BTreeSet::new();
        for (field, value) in &fields {
            if let Some(wanted) = value.as_u64() {
                self.claim_node_port(wanted, field, mine, &mut taken)?;
            }
        }
        for (field, value) in &mut fields {
            if value.is_null() {
                **value = json!(self.allocate_node_port(field, mine, &mut taken)?);
            }
        }
        drop(fields);
        spec["ports"] = json!(ports);
        match health {
            true => spec["healthCheckNodePort"] = health_port,
            false => {
                if let Some(map) = spec.as_object_mut() {
                    map.remove("healthCheckNodePort");
                }
            }
        }
        Ok(())
    }

    /// Whether `port` is free for a Service holding `mine`.
    fn free(&self, port: u16, mine: &BTreeSet<u16>) -> bool {
        mine.contains(&port) || !self.used.contains(&port)
    }

    fn claim_node_port(
        &self,
        wanted: u64,
        field: &str,
        mine: &BTreeSet<u16>,
        taken: &mut BTreeSet<u16>,
    ) -> Result<(), ApiError> {
        let (start, end) = (*self.node_ports.start(), *self.node_ports.end());
        let port = u16::try_from(wanted)
            .ok()
            .filter(|port| self.node_ports.contains(port))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{field}: Invalid value: {wanted}: provided port is not in the valid range. \
                     The range of valid ports is {start}-{end}"
                ))
            })?;
        // One Service may use a port for TCP and UDP alike.
        if !self.free(port, mine) && !taken.contains(&port) {
            return Err(ApiError::invalid(format!(
                "{field}: Invalid value: {port}: provided port is already allocated"
            )));
        }
        taken.insert(port);
        Ok(())
    }

    fn allocate_node_port(
        &mut self,
        field: &str,
        mine: &BTreeSet<u16>,
        taken: &mut BTreeSet<u16>,
    ) -> Result<u16, ApiError> {
        let (start, end) = (*self.node_ports.start(), *self.node_ports.end());
        let port = (self.cursor..=end)
            .chain(start..self.cursor)
            .find(|port| !taken.contains(port) && self.free(*port, mine))
            .ok_or_else(|| ApiError::invalid(format!("{field}: no NodePort is free")))?;
        self.cursor = if port == end { start } else { port + 1 };
        taken.insert(port);
        Ok(port)
    }
}

/// A Service's `ipFamilyPolicy` and `ipFamilies` as the API server of a
/// dual-stack cluster resolves them: families not given are the old ones (as
/// it infers them from the cluster IPs it keeps), else the primary one; two
/// families without a policy mean RequireDualStack; a dual-stack policy gets
/// the missing family added, a single stack keeps the first.
fn ip_families(spec: &Value, old_spec: Option<&Value>) -> Result<(String, Vec<String>), ApiError> {
    let given = spec["ipFamilies"].as_array();
    let listed = given
        .or_else(|| old_spec.and_then(|s| s["ipFamilies"].as_array()))
        .cloned()
        .unwrap_or_default();
    let mut families: Vec<String> = Vec::new();
    for (index, family) in listed.iter().enumerate() {
        let field = format!("spec.ipFamilies[{index}]");
        match family.as_str() {
            Some(name) if families.iter().any(|f| f == name) => {
                return Err(ApiError::invalid(format!(
                    "{field}: Duplicate value: \"{name}\""
                )));
            }
            Some(name) if FAMILIES.contains(&name) => families.push(name.to_owned()),
            _ => {
                return Err(ApiError::invalid(format!(
                    "{field}: Unsupported value: {family}: supported values: \"IPv4\", \"IPv6\""
                )));
            }
        }
    }
    let policy = match spec["ipFamilyPolicy"].as_str() {
        Some(policy) if POLICIES.contains(&policy) => policy,
        Some(policy) => {
            return Err(ApiError::invalid(format!(
                "spec.ipFamilyPolicy: Unsupported value: \"{policy}\": supported values: \
                 \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
            )));
        }
        None if families.len() == 2 => "RequireDualStack",
        None => "SingleStack",
    };
    let given_two = given.is_some_and(|given| given.len() == 2);
    if policy == "SingleStack" && given_two {
        return Err(ApiError::invalid(
            "spec.ipFamilyPolicy: Invalid value: \"SingleStack\": must be 'RequireDualStack' or \
             'PreferDualStack' when multiple 'ipFamilies' are specified",
        ));
    }
    if families.is_empty() {
        families.push(FAMILIES[0].to_owned());
    }
    match policy {
        "SingleStack" => families.truncate(1),
        _ if families.len() == 1 => {
            let other = FAMILIES.iter().find(|f| **f != families[0]);
            families.extend(other.map(|f| (*f).to_owned()));
        }
        _ => {}
    }
    Ok((policy.to_owned(), families))
}

/// The NodePorts (and healthCheckNodePort) a Service holds.
fn node_ports(service: &Value) -> BTreeSet<u16> {
    let spec = &service["spec"];
    let ports = spec["ports"].as_array().into_iter().flatten();
    ports
        .map(|port| &port["nodePort"])
        .chain([&spec["healthCheckNodePort"]])
        .filter_map(|port| u16::try_from(port.as_u64()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |seconds| timestamp(UNIX_EPOCH + std::time::Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    fn admitted(
        allocations: &mut Allocations,
        service: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let mut service = service;
        allocations.admit(Kind::Service, &mut service, old)?;
        Ok(service)
    }

    #[test]
    fn services_get_defaults_and_node_ports() {
        let mut allocations = Allocations::new(30000..=30003);
        let lb = json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer",
            "externalTrafficPolicy": "Local", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "nodePort": 30000}]}});
        let a = admitted(&mut allocations, lb, None).unwrap();
        let spec = &a["spec"];
        assert_eq!(spec["clusterIP"], "10.96.0.2");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][0]["nodePort"], 30001);
        assert_eq!(spec["ports"][1]["nodePort"], 30000);
        assert_eq!(spec["healthCheckNodePort"], 30002);
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);

        let taken = json!({"metadata": {"name": "b"}, "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30001}]}});
        let err = admitted(&mut allocations, taken, None).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        assert!(err.message.contains("already allocated"), "{}", err.message);
        let outside = json!({"metadata": {"name": "b"}, "spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}});
        assert!(
            admitted(&mut allocations, outside, None)
                .unwrap_err()
                .message
                .contains("valid range")
        );

        // Updating keeps the allocations; turning ClusterIP frees them.
        let mut update = a.clone();
        update["spec"]["ports"][0]
            .as_object_mut()
            .unwrap()
            .remove("nodePort");
        let kept = admitted(&mut allocations, update, Some(&a)).unwrap();
        assert_eq!(kept["spec"]["ports"][0]["nodePort"], 30001);
        let mut internal = kept.clone();
        internal["spec"]["type"] = json!("ClusterIP");
        let internal = admitted(&mut allocations, internal, Some(&kept)).unwrap();
        assert!(internal["spec"]["ports"][0].get("nodePort").is_none());
        assert!(internal["spec"].get("healthCheckNodePort").is_none());
        let c = json!({"metadata": {"name": "c"}, "spec": {"type": "NodePort", "ports": [{"port": 1}, {"port": 2}, {"port": 3}, {"port": 4}]}});
        let c = admitted(&mut allocations, c, None).unwrap();
        let ports: Vec<&Value> = (0..4).map(|i| &c["spec"]["ports"][i]["nodePort"]).collect();
        assert_eq!(ports, [30003, 30000, 30001, 30002]);
    }

    /// As the API server: a LoadBalancer that asks for no NodePorts gets none
    /// but those it names, and still its healthCheckNodePort.
    #[test]
    fn a_load_balancer_may_go_without_node_ports() {
        let mut allocations = Allocations::new(30000..=30003);
        let lb = json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false, "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}, {"port": 443, "nodePort": 30003}]}});
        let a = admitted(&mut allocations, lb, None).unwrap();
        let spec = &a["spec"];
        assert!(spec["ports"][0].get("nodePort").is_none(), "{spec}");
        assert_eq!(spec["ports"][1]["nodePort"], 30003);
        assert_eq!(spec["healthCheckNodePort"], 30000);
    }

    #[test]
    fn services_get_the_ip_families_of_a_dual_stack_cluster() {
        let mut allocations = Allocations::new(30000..=30003);
        let mut admit = |spec: Value, old: Option<&Value>| {
            let service = json!({"metadata": {"name": "a"}, "spec": spec});
            admitted(&mut allocations, service, old)
        };
        let families = |service: &Value| {
            let spec = &service["spec"];
            let policy = spec["ipFamilyPolicy"].as_str().unwrap().to_owned();
            (
                policy,
                spec["ipFamilies"].clone(),
                spec["clusterIPs"].clone(),
            )
        };
        let single = admit(json!({}), None).unwrap();
        assert_eq!(
            families(&single),
            ("SingleStack".into(), json!(["IPv4"]), json!(["10.96.0.2"]))
        );
        let six = admit(json!({"ipFamilies": ["IPv6"]}), None).unwrap();
        assert_eq!(six["spec"]["clusterIP"], "fd00:10:96::1");
        let prefer = admit(json!({"ipFamilyPolicy": "PreferDualStack"}), None).unwrap();
        assert_eq!(
            families(&prefer),
            (
                "PreferDualStack".into(),
                json!(["IPv4", "IPv6"]),
                json!(["10.96.0.3", "fd00:10:96::2"])
            )
        );
        let require = json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6"]});
        let require = admit(require, None).unwrap();
        assert_eq!(require["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        let two = admit(json!({"ipFamilies": ["IPv4", "IPv6"]}), None).unwrap();
        assert_eq!(two["spec"]["ipFamilyPolicy"], "RequireDualStack");

        // Updates keep the cluster IPs; a single stack keeps the first.
        let kept = admit(json!({"ipFamilyPolicy": "PreferDualStack"}), Some(&prefer)).unwrap();
        assert_eq!(families(&kept), families(&prefer));
        let single_again = admit(json!({"ipFamilyPolicy": "SingleStack"}), Some(&prefer)).unwrap();
        assert_eq!(
            families(&single_again),
            ("SingleStack".into(), json!(["IPv4"]), json!(["10.96.0.3"]))
        );

        for (spec, message) in [
            (
                json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
                "must be 'RequireDualStack' or 'PreferDualStack'",
            ),
            (
                json!({"ipFamilies": ["IPv5"]}),
                "spec.ipFamilies[0]: Unsupported value: \"IPv5\"",
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv4"]}),
                "spec.ipFamilies[1]: Duplicate value: \"IPv4\"",
            ),
            (
                json!({"ipFamilyPolicy": "DualStack"}),
                "spec.ipFamilyPolicy: Unsupported value: \"DualStack\"",
            ),
        ] {
            let err = admit(spec, None).unwrap_err();
            assert_eq!(err.code, 422);
            assert!(err.message.contains(message), "{}", err.message);
        }
    }
}
