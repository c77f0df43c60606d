//! `orderlog shares`: who received which field classes of which order, and
//! when, straight from the `OrderShared` events of the log; by order or by
//! party. Only records that continue their order's hash chain count (run
//! `verify` for the ones that do not).
//!
//! [`collect`] and the renderers are pure; [`run`] reads Kafka.

use serde::Serialize;
use uuid::Uuid;

use super::verify::{ChainChecker, Observed};
use super::{AuditError, Source, log, time_text};
use crate::domain::Party;
use crate::domain::validation::{MerchantId, ProviderId};
use crate::events::Body;
use crate::kafka::partition_of;

/// A party as the command line names it: `logistics:<id>` or `merchant:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartyFilter(pub Party);

impl std::str::FromStr for PartyFilter {
    type Err = AuditError;

    fn from_str(s: &str) -> Result<Self, AuditError> {
        let bad = || AuditError::BadParty(s.to_owned());
        match s.split_once(':') {
            Some(("logistics", id)) => Ok(Self(Party::Logistics(
                ProviderId::parse("party", id).map_err(|_| bad())?,
            ))),
            Some(("merchant", id)) => Ok(Self(Party::Merchant(
                MerchantId::parse("party", id).map_err(|_| bad())?,
            ))),
            _ => Err(bad()),
        }
    }
}

/// `logistics:<id>` or `merchant:<id>`, as the command line names it.
pub fn party_text(p: &Party) -> String {
    p.to_string()
}

/// One share as the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShareRecord {
    pub order_id: Uuid,
    pub party: String,
    pub classes: Vec<String>,
    pub at: String,
    pub at_ms: i64,
    pub sequence: u64,
    pub partition: i32,
    pub offset: i64,
}

/// Which shares to report.
#[derive(Debug, Clone, Default)]
pub struct SharesQuery {
    pub order: Option<Uuid>,
    pub party: Option<PartyFilter>,
}

/// Collects the matching shares from records fed in log order. Pure.
#[derive(Debug)]
pub struct Collector {
    checker: ChainChecker,
    query: SharesQuery,
    pub shares: Vec<ShareRecord>,
}

impl Collector {
    pub fn new(
        partitions: usize,
        query: SharesQuery,
        keys: Option<std::sync::Arc<crate::crypto::LogKeys>>,
    ) -> Self {
        Self {
            checker: ChainChecker::new(partitions, keys),
            query,
            shares: Vec::new(),
        }
    }

    pub fn observe(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, value: &[u8]) {
        let Observed::Accepted(env) = self.checker.observe(partition, offset, key, value) else {
            return;
        };
        let Body::OrderShared { party, classes } = &env.body else {
            return;
        };
        if self.query.order.is_some_and(|o| o != env.meta.order_id)
            || self.query.party.as_ref().is_some_and(|p| &p.0 != party)
        {
            return;
        }
        self.shares.push(ShareRecord {
            order_id: env.meta.order_id,
            party: party_text(party),
            classes: classes.iter().map(|c| c.as_str().to_owned()).collect(),
            at: time_text(env.meta.occurred_at_ms),
            at_ms: env.meta.occurred_at_ms,
            sequence: env.meta.sequence,
            partition,
            offset,
        });
    }

    /// The shares, oldest first.
    pub fn finish(mut self) -> Vec<ShareRecord> {
        self.shares.sort_by(|a, b| {
            (a.at_ms, a.partition, a.offset).cmp(&(b.at_ms, b.partition, b.offset))
        });
        self.shares
    }
}

pub fn to_table(shares: &[ShareRecord]) -> String {
    let mut s = format!(
        "{:<36}  {:<24}  {:<26}  {:<24}  {:>9}  {:>8}\n",
        "ORDER", "PARTY", "CLASSES", "AT", "PARTITION", "OFFSET"
    );
    for r in shares {
        s.push_str(&format!(
            "{:<36}  {:<24}  {:<26}  {:<24}  {:>9}  {:>8}\n",
            r.order_id,
            r.party,
            r.classes.join(","),
            r.at,
            r.partition,
            r.offset
        ));
    }
    s.push_str(&format!("{} shares\n", shares.len()));
    s
}

/// The shares as CSV (RFC 4180 quoting by the `csv` crate), one row each.
pub fn to_csv(shares: &[ShareRecord]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let header = [
        "order_id",
        "party",
        "classes",
        "at",
        "at_ms",
        "sequence",
        "partition",
        "offset",
    ];
    w.write_record(header).expect("writing to memory");
    for r in shares {
        w.write_record([
            r.order_id.to_string(),
            r.party.clone(),
            r.classes.join(";"),
            r.at.clone(),
            r.at_ms.to_string(),
            r.sequence.to_string(),
            r.partition.to_string(),
            r.offset.to_string(),
        ])
        .expect("writing to memory");
    }
    let bytes = w.into_inner().expect("flushing to memory");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8")
}

/// Reads the log (only the order's partition when one order is asked for).
pub fn run(source: &Source, query: SharesQuery) -> Result<Vec<ShareRecord>, AuditError> {
    let partitions = log::partition_count(source)?;
    let only = query
        .order
        .map(|o| vec![partition_of(&o, partitions) as i32]);
    let mut c = Collector::new(partitions, query, source.log_keys.clone());
    log::scan(source, only.as_deref(), |r| {
        c.observe(r.partition, r.offset, r.key.as_deref(), &r.value)
    })?;
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify::tests::Fixture;

    #[test]
    fn shares_are_reported_by_order_and_by_party() {
        let mut f = Fixture::new();
        let a = f.place(1);
        let b = f.place(2);
        f.share_logistics(a, "sf-express");
        f.share_merchant(b);
        f.share_logistics(b, "sf-express");
        let run = |q: SharesQuery| {
            let mut c = Collector::new(1, q, None);
            for (off, (key, value)) in f.records.iter().enumerate() {
                c.observe(0, off as i64, Some(key), value);
            }
            c.finish()
        };
        let sf = run(SharesQuery {
            party: Some("logistics:sf-express".parse().unwrap()),
            ..Default::default()
        });
        assert_eq!(
            sf.iter().map(|s| s.order_id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(sf[0].classes, vec!["shipping"]);
        assert_eq!(sf[0].offset, 2);
        let only_b = run(SharesQuery {
            order: Some(b),
            ..Default::default()
        });
        assert_eq!(only_b.len(), 2);
        assert_eq!(only_b[0].party, "merchant:m-1");
        let csv = to_csv(&only_b);
        assert!(csv.lines().nth(1).unwrap().contains(",merchant:m-1,"));
        assert_eq!(csv.lines().count(), 3);
        assert!(to_table(&sf).ends_with("2 shares\n"));
        assert!("courier:x".parse::<PartyFilter>().is_err());
        assert!("merchant:".parse::<PartyFilter>().is_err());
    }

    #[test]
    fn csv_quotes_a_field_with_a_comma_or_a_quote() {
        let r = ShareRecord {
            order_id: Uuid::nil(),
            party: "merchant:a,b".into(),
            classes: vec!["shipping".into(), "contact".into()],
            at: "say \"hi\"".into(),
            at_ms: 1,
            sequence: 2,
            partition: 3,
            offset: 4,
        };
        assert_eq!(
            to_csv(&[r]).lines().nth(1).unwrap(),
            format!(
                "{},\"merchant:a,b\",shipping;contact,\"say \"\"hi\"\"\",1,2,3,4",
                Uuid::nil()
            )
        );
    }
}
