//! CEL expressions of a target: `filter` (which events it receives), `transform` (the body it
//! is sent) and `ordering.key` (which events go one at a time). Compiled once per configuration
//! change; evaluated against one event's [`Variables`], never longer than the cost limit allows.
//!
//! The interpreter has no step budget of its own, so the cost is bounded before evaluating:
//! [`Expression::estimate`] walks the compiled expression once with the sizes of the event at
//! hand (its longest list or map, its longest string) and an expression whose estimate passes
//! [`COST_LIMIT`] is not run for that event. A unit is about one value visited.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Program, Value};

/// The most an evaluation may cost, in units of about one value visited.
pub const COST_LIMIT: u64 = 10_000_000;
/// The sizes an expression must fit into the cost limit at, to be accepted at all: a webhook
/// with lists of 100 items and strings of 4 KiB.
const TYPICAL: Sizes = Sizes {
    longest_list: 100,
    longest_string: 4096,
};
/// Longest expression source accepted (the CRD says the same).
pub const MAX_SOURCE_LENGTH: usize = 4096;

/// A compiled expression.
#[derive(Debug)]
pub struct Expression {
    program: Program,
}

/// Why an expression gave no usable result for an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvaluationError {
    #[error("{0}")]
    Failed(String),
    #[error("returned {got}, but {what} must return {expected}")]
    WrongType {
        what: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("would cost about {estimate} units for this event, over the limit of {COST_LIMIT}")]
    TooCostly { estimate: u64 },
}

impl Expression {
    /// Compiles `source`; the error is the compiler's message, or why it is refused (a construct
    /// the interpreter cannot run, or a cost over the limit on a typical event).
    pub fn compile(source: &str) -> Result<Self, String> {
        if source.len() > MAX_SOURCE_LENGTH {
            return Err(format!("longer than {MAX_SOURCE_LENGTH} characters"));
        }
        let program = Program::compile(source).map_err(|errors| errors.to_string().trim().to_owned())?;
        unsupported(program.expression())?;
        let expression = Self { program };
        let typical = expression.estimate(TYPICAL);
        if typical > COST_LIMIT {
            return Err(format!(
                "too costly: about {typical} units on an event with lists of {} items, over the limit of {COST_LIMIT}; nest fewer comprehensions (all, exists, map, filter)",
                TYPICAL.longest_list
            ));
        }
        Ok(expression)
    }

    /// Whether the expression reads a variable (so callers fetch only what is read).
    pub fn reads(&self, variable: &str) -> bool {
        self.program.references().has_variable(variable)
    }

    /// The estimated cost of evaluating for an event of these sizes.
    pub fn estimate(&self, sizes: Sizes) -> u64 {
        cost(self.program.expression(), sizes)
    }

    /// The expression's value for an event.
    pub fn evaluate(&self, variables: &Variables) -> Result<Value, EvaluationError> {
        let estimate = self.estimate(variables.sizes);
        if estimate > COST_LIMIT {
            return Err(EvaluationError::TooCostly { estimate });
        }
        ROOT.with(|root| {
            let mut context = root.new_inner_scope();
            context.add_variable_from_value("type", variables.event_type.clone());
            context.add_variable_from_value("source", variables.source.clone());
            context.add_variable_from_value("headers", variables.headers.clone());
            context.add_variable_from_value("body", variables.body.clone());
            context.add_variable_from_value("data", variables.data.clone());
            // The interpreter panics on a few inputs instead of failing; a panic must not take
            // the dispatcher or a request with it.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.program.execute(&context)))
                .map_err(|_| EvaluationError::Failed("the expression could not be evaluated".to_owned()))?
                .map_err(|err| EvaluationError::Failed(err.to_string()))
        })
    }

    /// A filter's verdict.
    pub fn matches(&self, variables: &Variables) -> Result<bool, EvaluationError> {
        match self.evaluate(variables)? {
            Value::Bool(verdict) => Ok(verdict),
            other => Err(wrong_type("a filter", "a bool", &other)),
        }
    }

    /// A transform's body and its content type: a map is sent as JSON, a string as text.
    pub fn render(&self, variables: &Variables) -> Result<(Vec<u8>, &'static str), EvaluationError> {
        match self.evaluate(variables)? {
            value @ Value::Map(_) => {
                let json = value
                    .json()
                    .map_err(|err| EvaluationError::Failed(format!("the result is not JSON: {err:?}")))?;
                Ok((json.to_string().into_bytes(), "application/json"))
            }
            Value::String(text) => Ok((text.as_bytes().to_vec(), "text/plain; charset=utf-8")),
            other => Err(wrong_type("a transform", "a map or a string", &other)),
        }
    }

    /// An ordering key: a string or a number; `None` (unordered) for null.
    pub fn key(&self, variables: &Variables) -> Result<Option<String>, EvaluationError> {
        match self.evaluate(variables)? {
            Value::String(text) => Ok(Some(text.to_string())),
            Value::Int(n) => Ok(Some(n.to_string())),
            Value::UInt(n) => Ok(Some(n.to_string())),
            Value::Null => Ok(None),
            other => Err(wrong_type(
                "an ordering key",
                "a string, a number or null",
                &other,
            )),
        }
    }
}

fn wrong_type(what: &'static str, expected: &'static str, got: &Value) -> EvaluationError {
    EvaluationError::WrongType {
        what,
        expected,
        got: got.type_of().to_string(),
    }
}

thread_local! {
    /// The standard functions, registered once per thread rather than per evaluation.
    static ROOT: Context<'static> = Context::default();
}

/// Refuses what the interpreter would panic on rather than evaluate (message literals).
fn unsupported(expression: &IdedExpr) -> Result<(), String> {
    match &expression.expr {
        Expr::Struct(_) => Err("message literals (Type{field: …}) are not supported".to_owned()),
        Expr::Unspecified => Err("the expression is incomplete".to_owned()),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                unsupported(target)?;
            }
            call.args.iter().try_for_each(unsupported)
        }
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .try_for_each(unsupported),
        Expr::List(list) => list.elements.iter().try_for_each(unsupported),
        Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(e) => unsupported(&e.key).and_then(|()| unsupported(&e.value)),
            EntryExpr::StructField(_) => Err("message fields are not supported".to_owned()),
        }),
        Expr::Select(select) => unsupported(&select.operand),
        Expr::Ident(_) | Expr::Literal(_) => Ok(()),
    }
}

/// Functions whose work grows with the length of a string argument.
const SCANNING: [&str; 4] = ["contains", "startsWith", "endsWith", "matches"];

/// The estimated cost of an expression: a unit per node; a comprehension runs its condition and
/// step once per element of its range (the range's literal length, else the event's longest
/// list) and, when it builds a list (`map`, `filter`), copies that list once per step; a
/// scanning string function costs a unit per 64 bytes of the event's longest string.
fn cost(expression: &IdedExpr, sizes: Sizes) -> u64 {
    match &expression.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified | Expr::Struct(_) => 1,
        Expr::Select(select) => 1 + cost(&select.operand, sizes),
        Expr::List(list) => list
            .elements
            .iter()
            .fold(1, |sum, e| sum.saturating_add(cost(e, sizes))),
        Expr::Map(map) => map.entries.iter().fold(1, |sum, entry| match &entry.expr {
            EntryExpr::MapEntry(e) => sum
                .saturating_add(cost(&e.key, sizes))
                .saturating_add(cost(&e.value, sizes)),
            EntryExpr::StructField(_) => sum,
        }),
        Expr::Call(call) => {
            let own = if SCANNING.contains(&call.func_name.as_str()) {
                1 + sizes.longest_string / 64
            } else {
                1
            };
            let target = call.target.as_ref().map_or(0, |t| cost(t, sizes));
            call.args.iter().fold(own.saturating_add(target), |sum, a| {
                sum.saturating_add(cost(a, sizes))
            })
        }
        Expr::Comprehension(c) => {
            let length = match &c.iter_range.expr {
                Expr::List(list) => list.elements.len() as u64,
                _ => sizes.longest_list,
            };
            let per_step = cost(&c.loop_cond, sizes).saturating_add(cost(&c.loop_step, sizes));
            let copying = if matches!(c.accu_init.expr, Expr::List(_)) {
                length.saturating_mul(length)
            } else {
                0
            };
            cost(&c.iter_range, sizes)
                .saturating_add(cost(&c.accu_init, sizes))
                .saturating_add(length.saturating_mul(per_step))
                .saturating_add(copying)
                .saturating_add(cost(&c.result, sizes))
        }
    }
}

/// How large an event's values are, for the cost estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Elements of its longest list or entries of its largest map.
    pub longest_list: u64,
    /// Bytes of its longest string.
    pub longest_string: u64,
}

impl Sizes {
    fn list(&mut self, length: usize) {
        self.longest_list = self.longest_list.max(length as u64);
    }

    fn string(&mut self, length: usize) {
        self.longest_string = self.longest_string.max(length as u64);
    }
}

/// What an expression sees of one event: `type`, `source` (`""` for a published event),
/// `headers` (lowercase names), `body` (the JSON body, null when it is not JSON) and `data`
/// (`body.data` where the body has one, else null).
#[derive(Clone, Debug)]
pub struct Variables {
    event_type: Value,
    source: Value,
    headers: Value,
    body: Value,
    data: Value,
    sizes: Sizes,
}

impl Variables {
    /// From an event as stored: its type, source, headers (a JSON object of strings) and body.
    pub fn new(event_type: &str, source: &str, headers: &serde_json::Value, body: &[u8]) -> Self {
        let mut sizes = Sizes::default();
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let body = parsed
            .as_ref()
            .map_or(Value::Null, |json| to_cel(json, &mut sizes));
        let data = match &body {
            Value::Map(map) => map
                .map
                .get(&Key::String(Arc::new("data".to_owned())))
                .cloned()
                .unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let headers = to_cel(headers, &mut sizes);
        sizes.string(event_type.len().max(source.len()));
        Self {
            event_type: Value::String(Arc::new(event_type.to_owned())),
            source: Value::String(Arc::new(source.to_owned())),
            headers,
            body,
            data,
            sizes,
        }
    }
}

/// JSON as CEL values (integers as `int`, or `uint` past its range; other numbers as `double`),
/// noting the sizes on the way.
fn to_cel(json: &serde_json::Value, sizes: &mut Sizes) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::UInt))
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        serde_json::Value::String(s) => {
            sizes.string(s.len());
            Value::String(Arc::new(s.clone()))
        }
        serde_json::Value::Array(items) => {
            sizes.list(items.len());
            Value::List(Arc::new(items.iter().map(|i| to_cel(i, sizes)).collect()))
        }
        serde_json::Value::Object(fields) => {
            sizes.list(fields.len());
            let map: HashMap<Key, Value> = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v, sizes)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// The compiled expressions of a target, or why one does not compile (named by its field).
#[derive(Debug, Default)]
pub struct TargetExpressions {
    pub filter: Option<Expression>,
    pub transform: Option<Expression>,
    pub ordering_key: Option<Expression>,
    /// Each that does not compile.
    pub problems: Vec<ExpressionProblem>,
}

/// An expression that does not compile: its field (`filter`, `transform`, `ordering.key`) and
/// the compiler's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ExpressionProblem {
    pub field: &'static str,
    pub message: String,
}

impl TargetExpressions {
    /// The expressions of a target's spec.
    pub fn of(spec: &crate::api::DeliveryTarget) -> Self {
        Self::compile(
            spec.filter.as_deref(),
            spec.transform.as_deref(),
            spec.ordering.as_ref().map(|o| o.key.as_str()),
        )
    }

    pub fn compile(filter: Option<&str>, transform: Option<&str>, ordering_key: Option<&str>) -> Self {
        let problems = RefCell::new(Vec::new());
        let compile = |field: &'static str, source: Option<&str>| {
            source.and_then(|s| {
                Expression::compile(s)
                    .map_err(|message| problems.borrow_mut().push(ExpressionProblem { field, message }))
                    .ok()
            })
        };
        let filter = compile("filter", filter);
        let transform = compile("transform", transform);
        let ordering_key = compile("ordering.key", ordering_key);
        Self {
            filter,
            transform,
            ordering_key,
            problems: problems.into_inner(),
        }
    }

    /// The first problem, for conditions.
    pub fn problem(&self) -> Option<&ExpressionProblem> {
        self.problems.first()
    }

    /// The problem of one field.
    pub fn problem_of(&self, field: &str) -> Option<&ExpressionProblem> {
        self.problems.iter().find(|p| p.field == field)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stripe_invoice(amount: i64) -> Variables {
        let body = json!({
            "id": "evt_1", "type": "invoice.paid",
            "data": {"object": {"id": "in_1", "customer": "cus_9", "amount_paid": amount,
                                "lines": {"data": [{"price": {"id": "price_a"}}, {"price": {"id": "price_b"}}]}}}
        });
        Variables::new(
            "invoice.paid",
            "stripe",
            &json!({"stripe-signature": "t=1,v1=00", "content-type": "application/json"}),
            body.to_string().as_bytes(),
        )
    }

    fn compile(source: &str) -> Expression {
        Expression::compile(source).unwrap_or_else(|why| panic!("{source}: {why}"))
    }

    #[test]
    fn filters_see_the_event_type_source_headers_body_and_data() {
        let big = stripe_invoice(15_000);
        let small = stripe_invoice(500);
        for (source, expected) in [
            ("data.object.amount_paid > 10000", (true, false)),
            ("type == 'invoice.paid' && source == 'stripe'", (true, true)),
            (
                "headers['content-type'].startsWith('application/json')",
                (true, true),
            ),
            ("body.id == 'evt_1'", (true, true)),
            (
                "data.object.lines.data.exists(l, l.price.id == 'price_b')",
                (true, true),
            ),
            ("has(data.object.refunded)", (false, false)),
        ] {
            let filter = compile(source);
            assert_eq!(
                (filter.matches(&big).unwrap(), filter.matches(&small).unwrap()),
                expected,
                "{source}"
            );
        }
    }

    #[test]
    fn a_published_envelope_has_its_data_as_data() {
        let body =
            json!({"type": "order.created", "timestamp": "2026-12-01T00:00:00Z", "data": {"amount": 150}});
        let variables = Variables::new("order.created", "", &json!({}), body.to_string().as_bytes());
        assert!(compile("data.amount > 100").matches(&variables).unwrap());
        assert!(compile("source == ''").matches(&variables).unwrap());
    }

    #[test]
    fn a_body_that_is_not_json_is_null() {
        let variables = Variables::new("push", "gh", &json!({}), b"payload=%7B%7D");
        assert!(
            compile("body == null && data == null")
                .matches(&variables)
                .unwrap()
        );
    }

    #[test]
    fn runtime_failures_and_wrong_types_are_errors_not_panics() {
        let event = stripe_invoice(1);
        let missing = compile("data.object.nothing.deeper > 1")
            .matches(&event)
            .unwrap_err();
        assert!(matches!(missing, EvaluationError::Failed(_)), "{missing}");
        let wrong = compile("data.object.amount_paid").matches(&event).unwrap_err();
        assert_eq!(wrong.to_string(), "returned int, but a filter must return a bool");
        assert!(compile("1 / 0 == 1").matches(&event).is_err());
    }

    #[test]
    fn transforms_render_maps_as_json_and_strings_as_text() {
        let event = stripe_invoice(15_000);
        let slack = compile(
            "{'text': 'Invoice ' + data.object.id + ' paid: ' + string(data.object.amount_paid), 'customer': data.object.customer}",
        );
        let (body, content_type) = slack.render(&event).unwrap();
        assert_eq!(content_type, "application/json");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"text": "Invoice in_1 paid: 15000", "customer": "cus_9"})
        );
        let (text, content_type) = compile("'paid ' + data.object.id").render(&event).unwrap();
        assert_eq!(
            (text.as_slice(), content_type),
            (b"paid in_1".as_slice(), "text/plain; charset=utf-8")
        );
        assert!(compile("[1, 2]").render(&event).is_err());
    }

    #[test]
    fn ordering_keys_are_strings_numbers_or_null() {
        let event = stripe_invoice(1);
        assert_eq!(
            compile("data.object.customer").key(&event).unwrap().as_deref(),
            Some("cus_9")
        );
        assert_eq!(
            compile("data.object.amount_paid").key(&event).unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(compile("null").key(&event).unwrap(), None);
        assert!(compile("data.object.lines").key(&event).is_err());
    }

    #[test]
    fn the_documented_examples_compile() {
        for source in [
            "data.object.amount_paid > 10000",
            "{'text': 'Invoice ' + data.object.id + ' paid: ' + string(data.object.amount_paid / 100) + ' ' + data.object.currency}",
            "body.ref == 'refs/heads/main'",
            "headers['x-github-event'] == 'push' && body.repository.private",
            "data.email_addresses.exists(e, e.email_address.endsWith('@example.com'))",
            "has(data.object.refunded)",
        ] {
            compile(source);
        }
    }

    #[test]
    fn compile_errors_carry_the_compilers_message() {
        let why = Expression::compile("data.object.amount_paid >").unwrap_err();
        assert!(!why.is_empty(), "a message");
        assert!(Expression::compile("google.protobuf.Int64Value{value: 1}").is_err());
        assert!(Expression::compile(&"a".repeat(MAX_SOURCE_LENGTH + 1)).is_err());
    }

    #[test]
    fn the_cost_limit_refuses_nested_comprehensions_and_oversized_events() {
        // Three nested comprehensions over the event's lists: 100³ steps on a typical event.
        let nested =
            Expression::compile("body.a.all(x, body.a.all(y, body.a.all(z, x + y + z > 0)))").unwrap_err();
        assert!(nested.starts_with("too costly"), "{nested}");
        // Two are fine on a typical event, and refused for one with a list of 10,000 items.
        let pairs = compile("body.items.exists(x, body.items.exists(y, x == y + 1))");
        let items: Vec<i64> = (0..10_000).collect();
        let large = Variables::new(
            "t",
            "s",
            &json!({}),
            json!({"items": items}).to_string().as_bytes(),
        );
        assert!(matches!(
            pairs.matches(&large),
            Err(EvaluationError::TooCostly { .. })
        ));
        let small = Variables::new(
            "t",
            "s",
            &json!({}),
            json!({"items": [1, 2]}).to_string().as_bytes(),
        );
        assert!(pairs.matches(&small).unwrap());
    }

    #[test]
    fn each_field_that_does_not_compile_is_named() {
        let compiled = TargetExpressions::compile(Some("type =="), Some("{'a': 1}"), Some("data.id"));
        assert!(compiled.filter.is_none() && compiled.transform.is_some() && compiled.ordering_key.is_some());
        assert_eq!(compiled.problems.len(), 1);
        let problem = compiled.problem().unwrap();
        assert_eq!(problem.field, "filter");
        assert!(problem.to_string().starts_with("filter: "), "{problem}");
    }
}
