//! Delivery calls: list deliveries and their attempts, and deliver again.

use ebb_common::error::Violations;
use ebb_common::page::Page;
use ebb_common::time::from_timestamp;
use ebb_common::{Error, Result};
use ebb_proto::notifier::v1 as pb;
use sea_orm::TransactionTrait;
use tonic::Request;

use super::service::{NotifierApi, call_key, required};
use crate::deliveries::{self, Filter};

impl NotifierApi {
    pub(super) async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<pb::ListDeliveriesResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        required(&mut v, "organization_id", &req.organization_id);
        let filter_key = format!(
            "{:?}",
            (
                &req.configuration_id,
                &req.event_id,
                &req.event_type,
                &req.statuses,
                &req.create_time_after,
                &req.create_time_before,
            )
        );
        let page = Page::read(
            &mut v,
            req.page_size,
            &req.page_token,
            &["deliveries", &req.organization_id, &filter_key],
        );
        let statuses = statuses(&req.statuses, "statuses", &mut v);
        if !req.event_type.is_empty()
            && let Err(e) = crate::patterns::validate(&req.event_type)
        {
            v.add("event_type", e);
        }
        let after_ms = req
            .create_time_after
            .as_ref()
            .and_then(|t| v.check("create_time_after", from_timestamp(t)));
        let before_ms = req
            .create_time_before
            .as_ref()
            .and_then(|t| v.check("create_time_before", from_timestamp(t)));
        v.finish()?;
        let filter = Filter {
            organization_id: req.organization_id.clone(),
            configuration_id: req.configuration_id.clone(),
            event_id: req.event_id.clone(),
            event_type: req.event_type.clone(),
            statuses,
            after_ms,
            before_ms,
        };
        let after = page.after_key_id()?;
        let rows = deliveries::list(&self.db, &filter, after.as_ref(), page.limit()).await?;
        let (rows, next_page_token) = page.finish(rows, |(k, d)| vec![k.to_string(), d.id.clone()]);
        Ok(pb::ListDeliveriesResponse {
            deliveries: rows.into_iter().map(|(_, d)| d).collect(),
            next_page_token,
        })
    }

    pub(super) async fn list_delivery_attempts(
        &self,
        request: Request<pb::ListDeliveryAttemptsRequest>,
    ) -> Result<pb::ListDeliveryAttemptsResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        required(&mut v, "delivery_id", &req.delivery_id);
        let page = Page::read(
            &mut v,
            req.page_size,
            &req.page_token,
            &["delivery_attempts", &req.delivery_id],
        );
        v.finish()?;
        if !deliveries::exists(&self.db, &req.delivery_id).await? {
            return Err(Error::not_found("delivery", req.delivery_id.clone()));
        }
        let after = page.after_int()?.unwrap_or(0);
        let rows = deliveries::attempts(&self.db, &req.delivery_id, after, page.limit()).await?;
        let (rows, next_page_token) = page.finish(rows, |a| vec![a.number.to_string()]);
        Ok(pb::ListDeliveryAttemptsResponse {
            attempts: rows,
            next_page_token,
        })
    }

    pub(super) async fn redeliver_delivery(
        &self,
        request: Request<pb::RedeliverDeliveryRequest>,
    ) -> Result<pb::RedeliverDeliveryResponse> {
        let key = call_key(&request, "RedeliverDelivery", &request.get_ref().request_id)?;
        let req = request.into_inner();
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        required(&mut v, "delivery_id", &req.delivery_id);
        v.finish()?;
        let txn = self.db.conn.begin().await?;
        let delivery = deliveries::redeliver_one(&txn, &req.delivery_id).await?;
        let response = self
            .finish(
                txn,
                &key,
                pb::RedeliverDeliveryResponse {
                    delivery: Some(delivery),
                },
            )
            .await?;
        self.wake.notify_one();
        Ok(response)
    }

    pub(super) async fn redeliver_deliveries(
        &self,
        request: Request<pb::RedeliverDeliveriesRequest>,
    ) -> Result<pb::RedeliverDeliveriesResponse> {
        let key = call_key(
            &request,
            "RedeliverDeliveries",
            &request.get_ref().request_id,
        )?;
        let req = request.into_inner();
        if let Some(r) = self.replay(&key).await? {
            return Ok(r);
        }
        let mut v = Violations::new();
        required(&mut v, "organization_id", &req.organization_id);
        let start = match &req.start_time {
            Some(t) => v.check("start_time", from_timestamp(t)),
            None => {
                v.add("start_time", "is required");
                None
            }
        };
        let end = match &req.end_time {
            Some(t) => v.check("end_time", from_timestamp(t)),
            None => {
                v.add("end_time", "is required");
                None
            }
        };
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            v.add("end_time", "must be after start_time");
        }
        let mut statuses = statuses(&req.statuses, "statuses", &mut v);
        if statuses.contains(&"cancelled") {
            v.add("statuses", "cancelled deliveries cannot be redelivered");
        }
        if statuses.is_empty() {
            statuses.push("failed");
        }
        v.finish()?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Error::invalid("start_time", "is required"));
        };
        let txn = self.db.conn.begin().await?;
        let n = deliveries::redeliver_range(
            &txn,
            &req.organization_id,
            start,
            end,
            &req.configuration_id,
            &statuses,
        )
        .await?;
        let response = self
            .finish(
                txn,
                &key,
                pb::RedeliverDeliveriesResponse {
                    deliveries_scheduled: n as i32,
                },
            )
            .await?;
        self.wake.notify_one();
        Ok(response)
    }
}

fn statuses(list: &[i32], field: &str, v: &mut Violations) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match deliveries::status_name(*s) {
            Some(name) => out.push(name),
            None => v.add(
                format!("{field}[{i}]"),
                "must be PENDING, SUCCEEDED, FAILED or CANCELLED",
            ),
        }
    }
    out
}
