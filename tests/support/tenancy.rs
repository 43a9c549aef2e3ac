//! The manifests a tenant's attacks are written with, shared by the tests
//! that try them against the real API server (`e2e`) and with real Pods on
//! real nodes (`nodes`): a team's internal Service `secret-db` (port 8080)
//! is what the tenant reaches for.

/// Gateway `name` of `class` in `namespace`, one TCP listener on 8080.
pub fn gateway(namespace: &str, name: &str, class: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  gatewayClassName: {class}\n  listeners: [{{name: db, port: 8080, protocol: TCP}}]\n"
    )
}

/// `tenant`'s Service named as Gateway `edge`'s would be, owned by it
/// (`uid`), with a hand-written route table naming `team`'s `secret-db`;
/// of `class` when given.
pub fn forged_gateway_service(tenant: &str, team: &str, uid: &str, class: Option<&str>) -> String {
    let program = format!(
        "{{\"ports\":[{{\"port\":8080,\"protocol\":\"TCP\",\"routes\":[{{\"route\":\"TCPRoute {tenant}/steal\",\
         \"backends\":[{{\"namespace\":\"{team}\",\"name\":\"secret-db\",\"port\":8080,\"weight\":1,\"usable\":true}}]}}]}}]}}"
    );
    let class = class
        .map(|c| format!("  loadBalancerClass: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: {tenant}\n  annotations:\n    \
         ironlb.dev/forwarding: embedded\n    ironlb.dev/gateway-program: '{program}'\n  ownerReferences:\n  \
         - {{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, name: edge, uid: {uid}, controller: true}}\n\
         spec:\n  type: LoadBalancer\n{class}  ports: [{{port: 8080, protocol: TCP}}]\n",
        svc = ironlb::gateway::service_name("edge"),
    )
}

/// `tenant`'s Gateway `gw` of `class` and a TCPRoute `steal` from it to
/// `team`'s `secret-db`.
pub fn steal_route(tenant: &str, team: &str, class: &str) -> String {
    format!(
        "{}---\napiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\n\
         metadata: {{name: steal, namespace: {tenant}}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  \
         rules: [{{backendRefs: [{{name: secret-db, namespace: {team}, port: 8080}}]}}]\n",
        gateway(tenant, "gw", class)
    )
}

/// `team`'s ReferenceGrant `let-in`, letting `tenant`'s TCPRoutes reach
/// its Services.
pub fn reference_grant(team: &str, tenant: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: ReferenceGrant\n\
         metadata: {{name: let-in, namespace: {team}}}\n\
         spec:\n  from: [{{group: gateway.networking.k8s.io, kind: TCPRoute, namespace: {tenant}}}]\n  \
         to: [{{group: \"\", kind: Service}}]\n"
    )
}
