//! `/api/v1/openapi.json`: the REST API described in OpenAPI 3.0, written by hand next to
//! the handlers so both change together (tests fuzz the API from it).

use axum::Json;
use serde_json::{json, Value};

fn ok(description: &str, schema: Value) -> Value {
    json!({
        "200": {"description": description, "content": {"application/json": {"schema": schema}}},
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
    })
}

fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn list_of(key: &str, item: Value) -> Value {
    obj(json!({ key: {"type": "array", "items": item} }), &[key])
}

fn any_obj() -> Value {
    json!({"type": "object", "additionalProperties": true})
}

fn param(name: &str, place: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": place, "required": place == "path", "schema": schema, "description": description})
}

fn get_op(summary: &str, params: Vec<Value>, responses: Value) -> Value {
    json!({"get": {"summary": summary, "parameters": params, "responses": responses}})
}

fn action(summary: &str, params: Vec<Value>, result: Value) -> Value {
    let mut responses = ok("done", result);
    responses["403"] = json!({"$ref": "#/components/responses/Error"});
    responses["404"] = json!({"$ref": "#/components/responses/Error"});
    responses["409"] = json!({"$ref": "#/components/responses/Error"});
    responses["502"] = json!({"$ref": "#/components/responses/Error"});
    responses["503"] = json!({"$ref": "#/components/responses/Error"});
    json!({"post": {
        "summary": summary,
        "description": "Needs the operator (deploy) role. With the session cookie, send the x-rebeam-csrf header from /api/v1/session.",
        "parameters": params, "responses": responses}})
}

/// The OpenAPI document.
pub fn spec() -> Value {
    let pid_param = param(
        "pid",
        "path",
        json!({"type": "string", "pattern": "^.+\\.[0-9]+\\.[0-9]+$"}),
        "NODE.INCARNATION.SERIAL",
    );
    let app_param = param(
        "name",
        "path",
        json!({"type": "string", "minLength": 1}),
        "app name",
    );
    // A monitor on the process page: its reference and the process at its other end.
    let monitor = obj(
        json!({"ref": {"type": "integer"}, "pid": {"type": "string", "nullable": true}}),
        &["ref"],
    );
    let process = obj(
        json!({
            "id": {"type": "string"}, "node": {"type": "string"}, "name": {"type": "string"},
            "app": {"type": "string"}, "version": {"type": "string"}, "kind": {"type": "string"},
            "initial": {"type": "string"}, "current_function": {"type": "string"},
            "mailbox": {"type": "integer"}, "handled": {"type": "integer"},
            "memory": {"type": "integer"}, "parent": {"type": "string", "nullable": true},
            "child": {"type": "string"}, "trap_exits": {"type": "boolean"},
            "links": {"type": "array", "items": {"type": "string"}},
            "stuck": {"type": "boolean"},
            "stuck_reason": {"type": "string", "nullable": true, "enum": ["handler running", "mailbox growing", null]},
            "stuck_for_ms": {"type": "integer", "nullable": true},
            // Only on the process page (`/api/v1/processes/{pid}`); null from a node that
            // predates them.
            "monitors": {"type": "array", "nullable": true, "items": monitor.clone(),
                "description": "monitors the process holds, each with the monitored process"},
            "monitored_by": {"type": "array", "nullable": true, "items": monitor,
                "description": "monitors others hold on the process, each with the monitoring process"},
            "stack": {"type": "array", "nullable": true, "items": {"type": "string"},
                "description": "Python frames as `file:line function`, innermost last, at most 30; empty when none runs"},
            "state": {"type": "string", "nullable": true,
                "description": "a server's attributes as a bounded repr, at most 2048 characters; empty for a function process"},
        }),
        &[
            "id", "node", "kind", "mailbox", "handled", "memory", "stuck",
        ],
    );
    let event = obj(
        json!({
            "seq": {"type": "integer"}, "index": {"type": "integer"}, "at_ms": {"type": "integer"},
            "kind": {"type": "string", "enum": ["node", "restart", "placement", "app", "operator"]},
            "app": {"type": "string"}, "node": {"type": "string"}, "who": {"type": "string"},
            "text": {"type": "string"},
        }),
        &["seq", "at_ms", "kind", "who", "text"],
    );
    let limit = |max: u64, default: u64| json!({"type": "integer", "minimum": 1, "maximum": max, "default": default});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Re:BEAM cluster API",
            "version": "1",
            "description": "What the dashboard and `rebeam --json` read. Authenticate with `Authorization: Bearer <token>` (or the dashboard's login cookie)."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": obj(json!({"error": {"type": "string"}, "message": {"type": "string"}}), &["error", "message"]),
            },
            "responses": {
                "Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        },
        "paths": {
            "/api/v1/session": get_op("Who you are, your role, and the CSRF token for cookie sessions", vec![],
                ok("session", obj(json!({"who": {"type": "string"}, "role": {"type": "string", "enum": ["read", "call", "deploy", "admin"]}, "can_act": {"type": "boolean"}, "can_kill": {"type": "boolean"}, "csrf": {"type": "string", "nullable": true}}), &["who", "role", "can_act", "can_kill"]))),
            "/api/v1/cluster": get_op("Controllers (role, term, leader, commit/applied, lag) and counts", vec![],
                ok("cluster", obj(json!({"this": any_obj(), "controllers": {"type": "array", "items": any_obj()}}), &["this", "controllers"]))),
            "/api/v1/nodes": get_op("Member nodes: incarnation, status, labels, lease, and `load` (memory, CPU %, message and peer rates, mailbox depth; null until the node answered a stats poll)", vec![], ok("nodes", list_of("nodes", any_obj()))),
            "/api/v1/apps": get_op("Applications: version, status, restart intensity, upgrades", vec![], ok("apps", list_of("apps", any_obj()))),
            "/api/v1/apps/{name}": get_op("One application with its history", vec![app_param.clone()], {
                let mut r = ok("app", any_obj()); r["404"] = json!({"$ref": "#/components/responses/Error"}); r }),
            "/api/v1/apps/{name}/stop": action("Stop an application (recorded in events)", vec![app_param], obj(json!({"stopped": {"type": "string"}}), &["stopped"])),
            "/api/v1/names": get_op("Global names (owner node) and each live node's local names (name, pid, node, app)", vec![], ok("names", obj(json!({
                "names": {"type": "array", "items": obj(json!({"name": {"type": "string"}, "pid": any_obj(), "node": {"type": "string"}}), &["name", "pid", "node"])},
                "local_names": {"type": "array", "items": obj(json!({"name": {"type": "string"}, "pid": {"type": ["string", "null"]}, "node": {"type": "string"}, "app": {"type": "string"}}), &["name", "pid", "node", "app"])},
                "local_names_truncated": {"type": "boolean"},
                "missing_nodes": {"type": "array", "items": any_obj()},
            }), &["names", "local_names", "local_names_truncated", "missing_nodes"]))),
            "/api/v1/groups": get_op("Process groups", vec![], ok("groups", list_of("groups", any_obj()))),
            "/api/v1/tree": get_op("Supervision tree across nodes: top-level children with restart history, the processes below them, recent crash tracebacks. A supervisor process has `supervisor`: {strategy, max_restarts, max_seconds, restarts_in_window, children: [{id, pid, restarts, kind, state}]}; a process below a supervisor has `child_id` and `restarts`",
                vec![param("app", "query", json!({"type": "string"}), "only this app")], ok("tree", list_of("apps", any_obj()))),
            "/api/v1/processes": get_op("Processes of every live node, filtered, sorted and paged on the server", vec![
                param("after", "query", json!({"type": "string"}), "start after this row: the next_cursor of the page before (same sort, order and filters); a deep page costs what the first does"),
                param("offset", "query", json!({"type": "integer", "minimum": 0}), "rows to skip (after the cursor, if any); every node sends offset + limit rows, so offset + limit may be 1000000 at most: page deeper with after"),
                param("limit", "query", limit(1000, 50), "rows per page"),
                param("sort", "query", json!({"type": "string", "enum": ["pid", "name", "app", "node", "kind", "mailbox", "handled", "memory", "function", "stuck"]}), "sort key (stuck: longest stuck last)"),
                param("order", "query", json!({"type": "string", "enum": ["asc", "desc"]}), "sort order"),
                param("q", "query", json!({"type": "string"}), "substring of pid, name, app, initial or current function"),
                param("node", "query", json!({"type": "string"}), "only this node"),
                param("app", "query", json!({"type": "string"}), "only this app"),
                param("stuck", "query", json!({"type": "boolean"}), "only processes that are (true) or are not (false) stuck: a handler running over 5 s, or a mailbox growing over 5 s while nothing is handled"),
            ], ok("a page", obj(json!({"total": {"type": "integer"}, "offset": {"type": "integer"}, "limit": {"type": "integer"},
                "items": {"type": "array", "items": process}, "missing_nodes": {"type": "array", "items": any_obj()}, "took_ms": {"type": "number"},
                "as_of_ms": {"type": "integer"}, "age_ms": {"type": "integer"},
                "next_cursor": {"type": "string", "nullable": true, "description": "pass as after= for the next page; null on the last"}}),
                &["total", "offset", "limit", "items", "missing_nodes"]))),
            "/api/v1/processes/{pid}": get_op("One process: links, trap_exit, mailbox, current function, names and groups", vec![pid_param.clone()], {
                let mut r = ok("process", any_obj()); r["404"] = json!({"$ref": "#/components/responses/Error"}); r }),
            "/api/v1/processes/{pid}/kill": action("Kill a process (untrappable; recorded in events)", vec![pid_param.clone()], obj(json!({"killed": {"type": "string"}}), &["killed"])),
            "/api/v1/processes/{pid}/restart": action("Restart a supervised child: it is killed and its supervisor (or the controller, for a top-level child) starts it again; recorded in events", vec![pid_param], obj(json!({"restarting": {"type": "string"}}), &["restarting"])),
            "/api/v1/tables": get_op("Every live node's shared tables (ETS): kind, access, size, owner and a bounded preview (none for private tables)", vec![
                param("node", "query", json!({"type": "string"}), "only this node"),
                param("preview", "query", json!({"type": "integer", "minimum": 0, "maximum": 50, "default": 10}), "entries shown per table"),
            ], ok("tables", obj(json!({"tables": {"type": "array", "items": obj(json!({
                "node": {"type": "string"}, "name": {"type": "string"}, "kind": {"type": "string"}, "access": {"type": "string"},
                "size": {"type": "integer"}, "owner": {"type": "string", "nullable": true},
                "preview": {"type": "array", "items": obj(json!({"key": {"type": "string"}, "value": {"type": "string"}}), &["key", "value"])},
            }), &["node", "name", "kind", "access", "size", "preview"])}, "missing_nodes": {"type": "array", "items": any_obj()}}), &["tables", "missing_nodes"]))),
            "/api/v1/events": get_op("The replicated event journal: crashes, restarts, membership, upgrades, operator actions", vec![
                param("after", "query", json!({"type": "integer", "minimum": 0}), "only events with a larger seq"),
                param("limit", "query", limit(2000, 200), "most events returned"),
                param("app", "query", json!({"type": "string"}), "only this app"),
                param("kind", "query", json!({"type": "string"}), "only this kind"),
            ], ok("events", obj(json!({"events": {"type": "array", "items": event}, "next_seq": {"type": "integer"}}), &["events", "next_seq"]))),
            "/api/v1/openapi.json": get_op("This document", vec![], ok("OpenAPI", any_obj())),
        }
    })
}

/// Serves [`spec`].
pub async fn document() -> Json<Value> {
    Json(spec())
}
