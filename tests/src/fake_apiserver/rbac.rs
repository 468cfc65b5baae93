//! RBAC as the API server's authorizer applies it to resource requests: the
//! rules of the Roles and ClusterRoles a manifest binds to its one
//! ServiceAccount (the token's), a ClusterRole by a ClusterRoleBinding
//! everywhere, a Role (or ClusterRole) by a RoleBinding in the binding's
//! namespace. What is not granted is 403 Forbidden.

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use serde::Deserialize as _;
use serde_yaml::Value;

/// What a manifest lets its ServiceAccount do.
#[derive(Clone, Debug)]
pub struct Authorizer {
    /// `system:serviceaccount:NAMESPACE:NAME`, for error messages.
    user: String,
    grants: Vec<Grant>,
}

/// A rule, and the namespace it holds in (`None`: everywhere, cluster-scoped
/// resources included).
#[derive(Clone, Debug)]
struct Grant {
    namespace: Option<String>,
    rule: PolicyRule,
}

/// A resource request as RBAC sees it.
pub struct Request<'a> {
    /// get, list, watch, create, update, patch or delete.
    pub verb: &'static str,
    /// The API group, "" for the core group.
    pub group: &'a str,
    /// The plural, with `/status` for the status subresource.
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl Authorizer {
    /// The grants of `manifest` (multi-document YAML) to the one
    /// ServiceAccount it defines.
    pub fn from_manifest(manifest: &str) -> Result<Self> {
        let mut documents = Documents::default();
        for document in serde_yaml::Deserializer::from_str(manifest) {
            let value = Value::deserialize(document).context("a YAML document")?;
            documents.add(value)?;
        }
        let [account] = &documents.accounts[..] else {
            bail!("the manifest must define one ServiceAccount");
        };
        let namespace = account.metadata.namespace.clone().unwrap_or_default();
        let name = account.metadata.name.clone().unwrap_or_default();
        let is_account = |subject: &Subject| {
            subject.kind == "ServiceAccount"
                && subject.name == name
                && subject.namespace.as_deref() == Some(&namespace)
        };
        let binds = |subjects: &Option<Vec<Subject>>| subjects.iter().flatten().any(is_account);
        let mut grants = Vec::new();
        for binding in &documents.cluster_bindings {
            if binds(&binding.subjects) {
                documents.grant(&binding.role_ref, None, &mut grants)?;
            }
        }
        for binding in &documents.bindings {
            if binds(&binding.subjects) {
                let namespace = binding.metadata.namespace.clone().unwrap_or_default();
                documents.grant(&binding.role_ref, Some(namespace), &mut grants)?;
            }
        }
        Ok(Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            grants,
        })
    }

    /// `Ok` if some grant allows `request`, else the API server's message.
    pub fn check(&self, request: &Request) -> Result<(), String> {
        if self.grants.iter().any(|grant| grant.allows(request)) {
            return Ok(());
        }
        let what = match request.name {
            Some(name) => format!("{} {name:?}", request.resource),
            None => request.resource.to_owned(),
        };
        let scope = match request.namespace {
            Some(namespace) => format!("in the namespace {namespace:?}"),
            None => "at the cluster scope".to_owned(),
        };
        Err(format!(
            "{what} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            self.user, request.verb, request.resource, request.group
        ))
    }
}

impl Grant {
    fn allows(&self, request: &Request) -> bool {
        let rule = &self.rule;
        let has = |list: &Option<Vec<String>>, item: &str| {
            list.iter().flatten().any(|x| x == "*" || x == item)
        };
        let in_scope = self.namespace.is_none() || self.namespace.as_deref() == request.namespace;
        let named = match (&rule.resource_names, request.name) {
            (Some(names), Some(name)) if !names.is_empty() => names.iter().any(|n| n == name),
            (Some(names), None) => names.is_empty(),
            _ => true,
        };
        in_scope
            && named
            && rule.verbs.iter().any(|v| v == "*" || v == request.verb)
            && has(&rule.api_groups, request.group)
            && has(&rule.resources, request.resource)
    }
}

/// The RBAC objects of a manifest.
#[derive(Default)]
struct Documents {
    accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    roles: Vec<Role>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    bindings: Vec<RoleBinding>,
}

impl Documents {
    fn add(&mut self, value: Value) -> Result<()> {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match kind {
            "ServiceAccount" => self.accounts.push(serde_yaml::from_value(value)?),
            "ClusterRole" => self.cluster_roles.push(serde_yaml::from_value(value)?),
            "Role" => self.roles.push(serde_yaml::from_value(value)?),
            "ClusterRoleBinding" => self.cluster_bindings.push(serde_yaml::from_value(value)?),
            "RoleBinding" => self.bindings.push(serde_yaml::from_value(value)?),
            // The namespace the ServiceAccount lives in grants nothing.
            "Namespace" => {}
            other => bail!("not an RBAC object: kind {other:?}"),
        }
        Ok(())
    }

    /// Adds the rules of the role `role` refers to, held in `namespace`.
    fn grant(
        &self,
        role: &RoleRef,
        namespace: Option<String>,
        grants: &mut Vec<Grant>,
    ) -> Result<()> {
        let rules = match role.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&role.name))
                .map(|r| &r.rules),
            // A RoleBinding's Role lies in the binding's namespace.
            "Role" => self
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(&role.name)
                        && r.metadata.namespace == namespace
                })
                .map(|r| &r.rules),
            other => bail!("a roleRef to a {other}"),
        };
        let rules = rules.with_context(|| format!("no {} {:?}", role.kind, role.name))?;
        grants.extend(rules.iter().flatten().map(|rule| Grant {
            namespace: namespace.clone(),
            rule: rule.clone(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = include_str!("../../../examples/kubernetes/rbac.yaml");

    fn request<'a>(
        verb: &'static str,
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            verb,
            group: "",
            resource,
            namespace,
            name: None,
        }
    }

    #[test]
    fn cluster_roles_hold_everywhere_and_roles_in_their_namespace() {
        let rbac = Authorizer::from_manifest(MANIFEST).expect("the example parses");
        assert!(rbac.check(&request("watch", "services", None)).is_ok());
        assert!(rbac.check(&request("list", "nodes", None)).is_ok());
        assert!(
            rbac.check(&request("patch", "services/status", Some("shop")))
                .is_ok()
        );
        let denied = rbac
            .check(&request("patch", "services", Some("shop")))
            .expect_err("only the status subresource is writable");
        assert!(
            denied.contains("system:serviceaccount:lb-system:lb"),
            "{denied}"
        );
        assert!(
            rbac.check(&request("list", "secrets", Some("metallb-system")))
                .is_ok()
        );
        assert!(
            rbac.check(&request("list", "secrets", Some("shop")))
                .is_err(),
            "the Role holds in metallb-system only"
        );
        assert!(rbac.check(&request("delete", "nodes", None)).is_err());
    }
}
