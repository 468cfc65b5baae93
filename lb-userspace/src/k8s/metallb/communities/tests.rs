use std::path::Path;

use super::*;

fn aliases(yaml: &str) -> (Aliases, Vec<Skipped>) {
    let loaded = crate::k8s::load_bytes(Path::new("test"), yaml.as_bytes());
    Aliases::of(&loaded.objects.metallb.communities)
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

/// MetalLB's "Advanced BGP configuration": an alias for NO_ADVERTISE.
const DOCUMENTED: &str = "apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: communities, namespace: metallb-system}
spec:
  communities:
  - {name: NO_ADVERTISE, value: '65535:65282'}
  - {name: big, value: 'large:64512:1:2'}";

#[test]
fn aliases_resolve_to_their_values_and_values_stand_for_themselves() {
    let (aliases, skipped) = aliases(DOCUMENTED);
    assert_eq!(skipped, []);
    let resolved = aliases
        .resolve(&strings(&["NO_ADVERTISE", "big", "64512:7"]))
        .unwrap();
    let texts: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    assert_eq!(texts, ["64512:7", "65535:65282", "large:64512:1:2"]);
    let error = aliases
        .resolve(&strings(&["64512:7", "NO_EXPORT"]))
        .unwrap_err();
    assert!(
        error.starts_with("spec.communities[1]: \"NO_EXPORT\""),
        "{error}"
    );
}

#[test]
fn a_community_object_with_a_bad_value_is_skipped_naming_the_alias() {
    let bad = DOCUMENTED.replace("'65535:65282'", "'65536:1'");
    let (aliases, skipped) = aliases(&bad);
    let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].starts_with(
            "Community metallb-system/communities: spec.communities[0].value: \"65536:1\""
        ),
        "{skipped:?}"
    );
    assert!(aliases.resolve(&strings(&["big"])).is_err());
}
