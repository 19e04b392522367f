//! Pure JSON conversions into Google's legacy Nearby Search shape.
//!
//! The protocol passes the legacy shape on (`html_attributions`, `results`, `status`, …); the
//! Places API (New) answers `{"places": [...]}` and, on failure, a Google RPC error body. Both
//! are mapped here, with no I/O, so they are tested from fixtures alone.

use serde_json::{Map, Value};

/// The `X-Goog-FieldMask` sent to the Places API (New): exactly the fields the conversion uses.
pub const NEW_API_FIELD_MASK: &str = "places.id,places.displayName,places.formattedAddress,\
places.shortFormattedAddress,places.location,places.types,places.rating,\
places.userRatingCount,places.businessStatus";

/// Builds a legacy-shape answer from `results`, with status `OK` or `ZERO_RESULTS`.
pub fn legacy_answer(results: Vec<Value>) -> Value {
    let status = if results.is_empty() {
        "ZERO_RESULTS"
    } else {
        "OK"
    };
    let mut top = Map::new();
    top.insert("html_attributions".into(), Value::Array(Vec::new()));
    top.insert("results".into(), Value::Array(results));
    top.insert("status".into(), Value::String(status.into()));
    Value::Object(top)
}

/// A legacy-shape answer with no results, the given status and Google's message.
pub fn legacy_status(status: &str, message: &str) -> Value {
    let mut top = Map::new();
    top.insert("html_attributions".into(), Value::Array(Vec::new()));
    top.insert("results".into(), Value::Array(Vec::new()));
    top.insert("status".into(), Value::String(status.into()));
    top.insert("error_message".into(), Value::String(message.into()));
    Value::Object(top)
}

/// Converts a Places API (New) `searchNearby` answer to the legacy shape.
///
/// Google answers `{}` when nothing is near, so a missing `places` is `ZERO_RESULTS`. An
/// `error` member is mapped as [`rpc_error_to_legacy`] does.
///
/// # Errors
/// A short description when the answer is not an object or `places` is not an array.
pub fn new_api_to_legacy(answer: &Value) -> Result<Value, String> {
    let Some(obj) = answer.as_object() else {
        return Err("answer is not a JSON object".into());
    };
    if let Some(mapped) = rpc_error_to_legacy(answer) {
        return Ok(mapped);
    }
    let places = match obj.get("places") {
        None | Some(Value::Null) => return Ok(legacy_answer(Vec::new())),
        Some(Value::Array(places)) => places,
        Some(_) => return Err("\"places\" is not an array".into()),
    };
    Ok(legacy_answer(
        places.iter().map(new_place_to_legacy).collect(),
    ))
}

/// Converts one place of the New API to one legacy result; absent fields stay absent.
fn new_place_to_legacy(place: &Value) -> Value {
    let mut out = Map::new();
    let field = |name: &str| place.get(name).filter(|v| !v.is_null());
    if let Some(v) = field("businessStatus") {
        out.insert("business_status".into(), v.clone());
    }
    if let Some(location) = field("location") {
        let mut latlng = Map::new();
        latlng.insert(
            "lat".into(),
            location.get("latitude").cloned().unwrap_or(Value::Null),
        );
        latlng.insert(
            "lng".into(),
            location.get("longitude").cloned().unwrap_or(Value::Null),
        );
        let mut geometry = Map::new();
        geometry.insert("location".into(), Value::Object(latlng));
        out.insert("geometry".into(), Value::Object(geometry));
    }
    if let Some(name) = field("displayName").and_then(|d| d.get("text")) {
        out.insert("name".into(), name.clone());
    }
    if let Some(id) = field("id") {
        out.insert("place_id".into(), id.clone());
    }
    if let Some(v) = field("rating") {
        out.insert("rating".into(), v.clone());
    }
    if let Some(v) = field("types") {
        out.insert("types".into(), v.clone());
    }
    if let Some(v) = field("userRatingCount") {
        out.insert("user_ratings_total".into(), v.clone());
    }
    if let Some(v) = field("shortFormattedAddress").or_else(|| field("formattedAddress")) {
        out.insert("vicinity".into(), v.clone());
    }
    Value::Object(out)
}

/// Maps a Google RPC error body (`{"error": {"code", "message", "status"}}`) to a legacy
/// answer with the matching status and Google's message; `None` when `body` is not one.
pub fn rpc_error_to_legacy(body: &Value) -> Option<Value> {
    let error = body.get("error")?.as_object()?;
    let rpc_status = error.get("status").and_then(Value::as_str).unwrap_or("");
    let legacy = match rpc_status {
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => "REQUEST_DENIED",
        "RESOURCE_EXHAUSTED" => "OVER_QUERY_LIMIT",
        "INVALID_ARGUMENT" => "INVALID_REQUEST",
        _ => "UNKNOWN_ERROR",
    };
    let message = match error.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => format!("places service error {rpc_status}"),
    };
    Some(legacy_status(legacy, &message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_new_answer_is_zero_results() {
        let v = new_api_to_legacy(&json!({})).expect("object");
        assert_eq!(
            v,
            json!({"html_attributions": [], "results": [], "status": "ZERO_RESULTS"})
        );
    }

    #[test]
    fn new_place_maps_every_field_and_falls_back_to_formatted_address() {
        let answer = json!({"places": [{
            "id": "abc", "displayName": {"text": "Royce Hall", "languageCode": "en"},
            "formattedAddress": "10745 Dickson Ct", "location": {"latitude": 1.5, "longitude": -2.0},
            "types": ["a"], "rating": 4.8, "userRatingCount": 7, "businessStatus": "OPERATIONAL"
        }]});
        let v = new_api_to_legacy(&answer).expect("object");
        let expected = json!({"html_attributions": [], "results": [{
            "business_status": "OPERATIONAL",
            "geometry": {"location": {"lat": 1.5, "lng": -2.0}},
            "name": "Royce Hall", "place_id": "abc", "rating": 4.8, "types": ["a"],
            "user_ratings_total": 7, "vicinity": "10745 Dickson Ct"
        }], "status": "OK"});
        assert_eq!(v, expected);
    }

    #[test]
    fn rpc_statuses_map_to_legacy_statuses() {
        for (rpc, legacy) in [
            ("PERMISSION_DENIED", "REQUEST_DENIED"),
            ("UNAUTHENTICATED", "REQUEST_DENIED"),
            ("RESOURCE_EXHAUSTED", "OVER_QUERY_LIMIT"),
            ("INVALID_ARGUMENT", "INVALID_REQUEST"),
            ("INTERNAL", "UNKNOWN_ERROR"),
        ] {
            let body = json!({"error": {"code": 403, "message": "m", "status": rpc}});
            let v = rpc_error_to_legacy(&body).expect("rpc error");
            assert_eq!(v["status"], legacy);
            assert_eq!(v["error_message"], "m");
            assert_eq!(v["results"], json!([]));
        }
        assert!(rpc_error_to_legacy(&json!({"places": []})).is_none());
    }

    #[test]
    fn non_object_new_answer_is_an_error() {
        assert!(new_api_to_legacy(&json!([1, 2])).is_err());
        assert!(new_api_to_legacy(&json!({"places": 3})).is_err());
    }
}
