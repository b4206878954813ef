//! RocketMQ's SQL92 message filter (`SelectorParser.jj`): parsed once into an expression tree,
//! evaluated per record against its properties (and `TAGS`). Pure: no I/O.
//!
//! Grammar (keywords case-insensitive, `--` and `/* */` comments):
//! ```text
//! or    := and (OR and)*
//! and   := eq (AND eq)*
//! eq    := cmp ( ('=' | '<>') cmp | IS [NOT] NULL )*
//! cmp   := unary ( ('>' | '>=' | '<' | '<=') unary
//!                | [NOT] BETWEEN number AND number
//!                | [NOT] IN '(' string (',' string)* ')'
//!                | [NOT] (CONTAINS | STARTSWITH | ENDSWITH) string )*
//! unary := '+' unary | '-' unary | NOT unary | primary
//! primary := string | integer ['L'] | float | TRUE | FALSE | NULL | identifier | '(' or ')'
//! ```
//! Semantics follow RocketMQ's: three-valued logic (a missing property is NULL, a comparison
//! with NULL is unknown, and a record matches only when the expression is TRUE); a property's
//! string value compares with a number when it parses as one (else the comparison is unknown);
//! strings compare only by `=` and `<>`; `CONTAINS`/`STARTSWITH`/`ENDSWITH` of NULL are false.

use std::fmt;

/// A malformed expression: what is wrong and where (1-based character column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based character position in the expression.
    pub column: usize,
    /// What was expected or found.
    pub reason: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.reason)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
    End,
}

/// A token and the character column it starts at.
type Spanned = (Tok, usize);

fn lex(src: &str) -> Result<Vec<Spanned>, FilterError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |i: usize, reason: String| FilterError {
        column: i + 1,
        reason,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            loop {
                if i + 1 >= chars.len() {
                    return Err(err(start, "unterminated comment".into()));
                }
                if chars[i] == '*' && chars[i + 1] == '/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(start, "unterminated string".into())),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Str(s), start));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let mut text = String::new();
            let mut float = false;
            while i < chars.len() && chars[i].is_ascii_digit() {
                text.push(chars[i]);
                i += 1;
            }
            if chars.get(i) == Some(&'.') {
                float = true;
                text.push('.');
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            if matches!(chars.get(i), Some('e' | 'E')) {
                let mut j = i + 1;
                if matches!(chars.get(j), Some('+' | '-')) {
                    j += 1;
                }
                if chars.get(j).is_some_and(char::is_ascii_digit) {
                    float = true;
                    text.extend(&chars[i..j]);
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        text.push(chars[i]);
                        i += 1;
                    }
                }
            }
            let tok = if float {
                let v: f64 = text
                    .parse()
                    .map_err(|_| err(start, format!("bad number {text:?}")))?;
                if matches!(chars.get(i), Some('d' | 'D' | 'f' | 'F')) {
                    i += 1;
                }
                Tok::Float(v)
            } else {
                if matches!(chars.get(i), Some('l' | 'L')) {
                    i += 1;
                }
                let v: i64 = text
                    .parse()
                    .map_err(|_| err(start, format!("integer {text} is too large")))?;
                Tok::Int(v)
            };
            if chars
                .get(i)
                .is_some_and(|c| c.is_alphanumeric() || *c == '_')
            {
                return Err(err(i, format!("unexpected {:?} after a number", chars[i])));
            }
            out.push((tok, start));
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let mut s = String::new();
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                s.push(chars[i]);
                i += 1;
            }
            out.push((Tok::Ident(s), start));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op: &'static str = match two.as_str() {
                "<>" => "<>",
                ">=" => ">=",
                "<=" => "<=",
                _ => match c {
                    '=' => "=",
                    '>' => ">",
                    '<' => "<",
                    '+' => "+",
                    '-' => "-",
                    '(' => {
                        out.push((Tok::LParen, start));
                        i += 1;
                        continue;
                    }
                    ')' => {
                        out.push((Tok::RParen, start));
                        i += 1;
                        continue;
                    }
                    ',' => {
                        out.push((Tok::Comma, start));
                        i += 1;
                        continue;
                    }
                    _ => return Err(err(start, format!("unexpected character {c:?}"))),
                },
            };
            i += op.len();
            out.push((Tok::Op(op), start));
        }
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

/// A literal value, or a property's.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Lit(Value),
    Prop(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    IsNull(Box<Expr>, bool),
    Between(Box<Expr>, f64, f64, bool),
    In(Box<Expr>, Vec<String>, bool),
    Str(StrOp, Box<Expr>, String, bool),
}

struct Parser {
    toks: Vec<Spanned>,
    at: usize,
    depth: usize,
}

/// Deepest nesting accepted (parentheses, NOT, signs): a bound on recursion, so a hostile
/// expression is an error, not a stack overflow.
const MAX_DEPTH: usize = 100;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn column(&self) -> usize {
        self.toks[self.at].1 + 1
    }

    fn err<T>(&self, reason: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            column: self.column(),
            reason: reason.into(),
        })
    }

    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(k))
    }

    fn keyword_at(&self, offset: usize, k: &str) -> bool {
        matches!(self.toks.get(self.at + offset), Some((Tok::Ident(s), _)) if s.eq_ignore_ascii_case(k))
    }

    fn eat_keyword(&mut self, k: &str) -> bool {
        let yes = self.keyword(k);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect_keyword(&mut self, k: &str) -> Result<(), FilterError> {
        if self.eat_keyword(k) {
            Ok(())
        } else {
            self.err(format!("expected {k}, found {}", describe(self.peek())))
        }
    }

    fn deeper(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested more than {MAX_DEPTH} deep"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.equality()?;
        while self.eat_keyword("AND") {
            let right = self.equality()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.comparison()?;
        loop {
            match self.peek() {
                Tok::Op("=") | Tok::Op("<>") => {
                    let op = if self.peek() == &Tok::Op("=") {
                        Cmp::Eq
                    } else {
                        Cmp::Ne
                    };
                    self.at += 1;
                    let right = self.comparison()?;
                    left = Expr::Cmp(op, Box::new(left), Box::new(right));
                }
                _ if self.keyword("IS") => {
                    self.at += 1;
                    let not = self.eat_keyword("NOT");
                    self.expect_keyword("NULL")?;
                    left = Expr::IsNull(Box::new(left), not);
                }
                _ => return Ok(left),
            }
        }
    }

    fn string_literal(&mut self, what: &str) -> Result<String, FilterError> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.at += 1;
                Ok(s)
            }
            other => self.err(format!(
                "{what} takes a string literal, not {}",
                describe(&other)
            )),
        }
    }

    fn number_constant(&mut self) -> Result<f64, FilterError> {
        let negative = match self.peek() {
            Tok::Op("-") => {
                self.at += 1;
                true
            }
            Tok::Op("+") => {
                self.at += 1;
                false
            }
            _ => false,
        };
        let v = match self.peek().clone() {
            Tok::Int(i) => i as f64,
            Tok::Float(f) => f,
            other => {
                return self.err(format!(
                    "BETWEEN takes number constants, not {}",
                    describe(&other)
                ));
            }
        };
        self.at += 1;
        Ok(if negative { -v } else { v })
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Op(">") => Some(Cmp::Gt),
                Tok::Op(">=") => Some(Cmp::Ge),
                Tok::Op("<") => Some(Cmp::Lt),
                Tok::Op("<=") => Some(Cmp::Le),
                _ => None,
            };
            if let Some(op) = op {
                self.at += 1;
                let right = self.unary()?;
                left = Expr::Cmp(op, Box::new(left), Box::new(right));
                continue;
            }
            let not = self.keyword("NOT")
                && ["BETWEEN", "IN", "CONTAINS", "STARTSWITH", "ENDSWITH"]
                    .iter()
                    .any(|k| self.keyword_at(1, k));
            if not {
                self.at += 1;
            }
            if self.eat_keyword("BETWEEN") {
                let column = self.column();
                let low = self.number_constant()?;
                self.expect_keyword("AND")?;
                let high = self.number_constant()?;
                if low > high {
                    return Err(FilterError {
                        column,
                        reason: format!(
                            "BETWEEN {low} AND {high}: the low bound is above the high one"
                        ),
                    });
                }
                left = Expr::Between(Box::new(left), low, high, not);
            } else if self.eat_keyword("IN") {
                if self.peek() != &Tok::LParen {
                    return self.err("IN takes a parenthesised list of strings");
                }
                self.at += 1;
                let mut list = vec![self.string_literal("IN")?];
                while self.peek() == &Tok::Comma {
                    self.at += 1;
                    list.push(self.string_literal("IN")?);
                }
                if self.peek() != &Tok::RParen {
                    return self.err(format!(
                        "expected ) after the IN list, found {}",
                        describe(self.peek())
                    ));
                }
                self.at += 1;
                left = Expr::In(Box::new(left), list, not);
            } else if let Some(op) = [
                ("CONTAINS", StrOp::Contains),
                ("STARTSWITH", StrOp::StartsWith),
                ("ENDSWITH", StrOp::EndsWith),
            ]
            .iter()
            .find(|(k, _)| self.keyword(k))
            .map(|(_, op)| *op)
            {
                let name = match self.peek() {
                    Tok::Ident(s) => s.to_ascii_uppercase(),
                    _ => String::new(),
                };
                self.at += 1;
                let lit = self.string_literal(&name)?;
                left = Expr::Str(op, Box::new(left), lit, not);
            } else {
                return Ok(left);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        self.deeper()?;
        let e = match self.peek() {
            Tok::Op("+") => {
                self.at += 1;
                self.unary()?
            }
            Tok::Op("-") => {
                self.at += 1;
                Expr::Neg(Box::new(self.unary()?))
            }
            _ if self.keyword("NOT") => {
                self.at += 1;
                Expr::Not(Box::new(self.unary()?))
            }
            _ => self.primary()?,
        };
        self.depth -= 1;
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        let (tok, _) = self.toks[self.at].clone();
        let e = match tok {
            Tok::Str(s) => Expr::Lit(Value::Str(s)),
            Tok::Int(i) => Expr::Lit(Value::Int(i)),
            Tok::Float(f) => Expr::Lit(Value::Float(f)),
            Tok::LParen => {
                self.at += 1;
                self.deeper()?;
                let e = self.or()?;
                self.depth -= 1;
                if self.peek() != &Tok::RParen {
                    return self.err(format!("expected ), found {}", describe(self.peek())));
                }
                e
            }
            Tok::Ident(ref s) => {
                let upper = s.to_ascii_uppercase();
                match upper.as_str() {
                    "TRUE" => Expr::Lit(Value::Bool(true)),
                    "FALSE" => Expr::Lit(Value::Bool(false)),
                    "NULL" => Expr::Lit(Value::Null),
                    "AND" | "OR" | "NOT" | "BETWEEN" | "IN" | "IS" | "CONTAINS" | "STARTSWITH"
                    | "ENDSWITH" => {
                        return self.err(format!("expected a value, found keyword {upper}"));
                    }
                    _ => Expr::Prop(s.clone()),
                }
            }
            other => return self.err(format!("expected a value, found {}", describe(&other))),
        };
        self.at += 1;
        Ok(e)
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Op(o) => format!("{o:?}"),
        Tok::LParen => "\"(\"".into(),
        Tok::RParen => "\")\"".into(),
        Tok::Comma => "\",\"".into(),
        Tok::End => "the end of the expression".into(),
    }
}

/// A parsed SQL92 filter.
///
/// ```
/// use duolog::consumer::SqlFilter;
/// let f = SqlFilter::parse("a > 5 AND TAGS IN ('TagA', 'TagB') AND name STARTSWITH 'x'")?;
/// let props = |name: &str| match name {
///     "a" => Some("7"),
///     "TAGS" => Some("TagA"),
///     "name" => Some("xyz"),
///     _ => None,
/// };
/// assert!(f.matches(props));
/// assert!(SqlFilter::parse("a > ").is_err());
/// # Ok::<(), duolog::consumer::FilterError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SqlFilter {
    expr: Expr,
    source: String,
}

impl SqlFilter {
    /// Parses an expression; a malformed one is an error naming the column.
    pub fn parse(source: &str) -> Result<SqlFilter, FilterError> {
        let toks = lex(source)?;
        let mut p = Parser {
            toks,
            at: 0,
            depth: 0,
        };
        if p.peek() == &Tok::End {
            return p.err("empty expression");
        }
        let expr = p.or()?;
        if p.peek() != &Tok::End {
            return p.err(format!("unexpected {}", describe(p.peek())));
        }
        Ok(SqlFilter {
            expr,
            source: source.to_owned(),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a record whose properties `lookup` answers (`TAGS` included) matches: the
    /// expression is TRUE (not FALSE, not unknown).
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        matches!(eval(&self.expr, &lookup), Value::Bool(true))
    }
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Str(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn from_truth(b: Option<bool>) -> Value {
    b.map_or(Value::Null, Value::Bool)
}

fn compare(op: Cmp, l: &Value, r: &Value) -> Option<bool> {
    if matches!(l, Value::Null) || matches!(r, Value::Null) {
        return None;
    }
    // Strings (and booleans) compare by equality only, unless both sides read as numbers with
    // a number literal among them.
    let numeric = matches!(l, Value::Int(_) | Value::Float(_))
        || matches!(r, Value::Int(_) | Value::Float(_));
    if numeric {
        let (a, b) = (num(l)?, num(r)?);
        return Some(match op {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        });
    }
    match op {
        Cmp::Eq => Some(l == r),
        Cmp::Ne => Some(l != r),
        _ => None,
    }
}

fn eval<'a>(e: &Expr, lookup: &impl Fn(&str) -> Option<&'a str>) -> Value {
    match e {
        Expr::Lit(v) => v.clone(),
        Expr::Prop(name) => lookup(name).map_or(Value::Null, |s| Value::Str(s.to_owned())),
        Expr::Neg(inner) => match eval(inner, lookup) {
            Value::Int(i) => i
                .checked_neg()
                .map_or(Value::Float(-(i as f64)), Value::Int),
            Value::Float(f) => Value::Float(-f),
            v => num(&v).map_or(Value::Null, |f| Value::Float(-f)),
        },
        Expr::Not(inner) => from_truth(truth(&eval(inner, lookup)).map(|b| !b)),
        Expr::And(a, b) => {
            let l = truth(&eval(a, lookup));
            if l == Some(false) {
                return Value::Bool(false);
            }
            match (l, truth(&eval(b, lookup))) {
                (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            }
        }
        Expr::Or(a, b) => {
            let l = truth(&eval(a, lookup));
            if l == Some(true) {
                return Value::Bool(true);
            }
            match (l, truth(&eval(b, lookup))) {
                (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Null,
            }
        }
        Expr::Cmp(op, a, b) => from_truth(compare(*op, &eval(a, lookup), &eval(b, lookup))),
        Expr::IsNull(inner, not) => Value::Bool(matches!(eval(inner, lookup), Value::Null) != *not),
        Expr::Between(inner, low, high, not) => {
            let v = eval(inner, lookup);
            from_truth(num(&v).map(|x| (*low <= x && x <= *high) != *not))
        }
        Expr::In(inner, list, not) => match eval(inner, lookup) {
            Value::Str(s) => Value::Bool(list.contains(&s) != *not),
            _ => Value::Null,
        },
        Expr::Str(op, inner, lit, not) => match eval(inner, lookup) {
            Value::Str(s) => {
                let hit = match op {
                    StrOp::Contains => s.contains(lit.as_str()),
                    StrOp::StartsWith => s.starts_with(lit.as_str()),
                    StrOp::EndsWith => s.ends_with(lit.as_str()),
                };
                Value::Bool(hit != *not)
            }
            Value::Null => Value::Bool(*not),
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(expr: &str, props: &[(&str, &str)]) -> bool {
        let f = SqlFilter::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        f.matches(|n| props.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
    }

    #[test]
    fn every_operator_and_literal() {
        let p = [("a", "10"), ("s", "hello"), ("TAGS", "TagA"), ("f", "2.5")];
        for (expr, want) in [
            ("a = 10", true),
            ("a <> 10", false),
            ("a > 9 AND a >= 10 AND a < 11 AND a <= 10", true),
            ("a > 10L", false),
            ("f > .5 AND f < 5. AND f < 5E10 AND f > 2.4e0", true),
            ("a BETWEEN 1 AND 10", true),
            ("a NOT BETWEEN 1 AND 10", false),
            ("a BETWEEN -5 AND -1", false),
            ("s IN ('x', 'hello')", true),
            ("s NOT IN ('x', 'hello')", false),
            ("s = 'hello'", true),
            ("s <> 'hello'", false),
            ("s = 'it''s'", false),
            (
                "s CONTAINS 'ell' AND s STARTSWITH 'he' AND s ENDSWITH 'lo'",
                true,
            ),
            ("s NOT CONTAINS 'ell'", false),
            ("missing IS NULL AND s IS NOT NULL", true),
            ("missing CONTAINS 'x'", false),
            ("missing NOT CONTAINS 'x'", true),
            ("missing = 1", false),
            ("NOT (missing = 1)", false),
            ("missing = 1 OR a = 10", true),
            ("TAGS = 'TagA'", true),
            ("TRUE AND NOT FALSE", true),
            ("-a < 0 AND +a > 0", true),
            ("s > 1", false),
            ("a = 10 /* comment */ -- trailing", true),
            ("(a = 1 OR a = 10) AND (s = 'hello')", true),
            ("a is not null and s startswith 'h'", true),
            ("NULL IS NULL", true),
        ] {
            assert_eq!(m(expr, &p), want, "{expr}");
        }
    }

    #[test]
    fn errors_name_the_column() {
        for (expr, column) in [
            ("a >", 4),
            ("a = 'open", 5),
            ("a BETWEEN 5 AND 1", 11),
            ("a IN (1)", 7),
            ("a CONTAINS 5", 12),
            ("(a = 1", 7),
            ("a = 1 b", 7),
            ("", 1),
            ("a # 1", 3),
            ("a = 99999999999999999999", 5),
            ("AND", 1),
            ("a BETWEEN x AND 2", 11),
        ] {
            let e = SqlFilter::parse(expr).unwrap_err();
            assert_eq!(e.column, column, "{expr}: {e}");
        }
        let deep = format!("{}a = 1{}", "(".repeat(500), ")".repeat(500));
        assert!(SqlFilter::parse(&deep).is_err());
        assert!(SqlFilter::parse(&"NOT ".repeat(1000)).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("DUOLOG_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
        ))]
        /// Any input parses or fails with a column inside it; never a panic.
        #[test]
        fn the_parser_never_panics(src in "\\\\PC{0,60}") {
            match SqlFilter::parse(&src) {
                Ok(f) => { let _ = f.matches(|_| Some("1")); }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1),
            }
        }

        /// Inputs made of the grammar's own words, which reach deeper than random text.
        #[test]
        fn the_parser_never_panics_on_grammar_soup(words in proptest::collection::vec(
            prop_oneof![
                Just("a"), Just("TAGS"), Just("="), Just("<>"), Just(">"), Just(">="),
                Just("<"), Just("<="), Just("AND"), Just("OR"), Just("NOT"), Just("BETWEEN"),
                Just("IN"), Just("IS"), Just("NULL"), Just("TRUE"), Just("("), Just(")"),
                Just(","), Just("'x'"), Just("1"), Just("2.5"), Just("-"), Just("+"),
                Just("CONTAINS"), Just("STARTSWITH"), Just("ENDSWITH"), Just("10L"),
            ], 0..25)) {
            let src = words.join(" ");
            match SqlFilter::parse(&src) {
                Ok(f) => { let _ = f.matches(|n| (n == "a").then_some("5")); }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1),
            }
        }
    }
}
