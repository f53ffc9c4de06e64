//! The HTTP vocabulary shared by the data plane and the services: methods and
//! the statuses the node sends.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// Response statuses the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    SwitchingProtocols,
    Ok,
    Created,
    Accepted,
    NoContent,
    PartialContent,
    MovedPermanently,
    Found,
    SeeOther,
    NotModified,
    TemporaryRedirect,
    PermanentRedirect,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Gone,
    PreconditionFailed,
    PayloadTooLarge,
    RangeNotSatisfiable,
    UnprocessableContent,
    HeaderFieldsTooLarge,
    InternalServerError,
    NotImplemented,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
    InsufficientStorage,
    NonAuthoritativeInformation,
    ResetContent,
    MultipleChoices,
    PaymentRequired,
    NotAcceptable,
    RequestTimeout,
    Conflict,
    LengthRequired,
    UnsupportedMediaType,
    ExpectationFailed,
    ImATeapot,
    TooEarly,
    UpgradeRequired,
    PreconditionRequired,
    TooManyRequests,
    UnavailableForLegalReasons,
    HttpVersionNotSupported,
}

/// All statuses, in the order of [`Status::index`], for metrics.
pub const STATUSES: [Status; 46] = [
    Status::SwitchingProtocols,
    Status::Ok,
    Status::Created,
    Status::Accepted,
    Status::NoContent,
    Status::PartialContent,
    Status::MovedPermanently,
    Status::Found,
    Status::SeeOther,
    Status::NotModified,
    Status::TemporaryRedirect,
    Status::PermanentRedirect,
    Status::BadRequest,
    Status::Unauthorized,
    Status::Forbidden,
    Status::NotFound,
    Status::MethodNotAllowed,
    Status::Gone,
    Status::PreconditionFailed,
    Status::PayloadTooLarge,
    Status::RangeNotSatisfiable,
    Status::UnprocessableContent,
    Status::HeaderFieldsTooLarge,
    Status::InternalServerError,
    Status::NotImplemented,
    Status::BadGateway,
    Status::ServiceUnavailable,
    Status::GatewayTimeout,
    Status::InsufficientStorage,
    Status::NonAuthoritativeInformation,
    Status::ResetContent,
    Status::MultipleChoices,
    Status::PaymentRequired,
    Status::NotAcceptable,
    Status::RequestTimeout,
    Status::Conflict,
    Status::LengthRequired,
    Status::UnsupportedMediaType,
    Status::ExpectationFailed,
    Status::ImATeapot,
    Status::TooEarly,
    Status::UpgradeRequired,
    Status::PreconditionRequired,
    Status::TooManyRequests,
    Status::UnavailableForLegalReasons,
    Status::HttpVersionNotSupported,
];

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::SwitchingProtocols => 101,
            Status::Ok => 200,
            Status::Created => 201,
            Status::Accepted => 202,
            Status::NoContent => 204,
            Status::PartialContent => 206,
            Status::NotModified => 304,
            Status::MovedPermanently => 301,
            Status::Found => 302,
            Status::SeeOther => 303,
            Status::TemporaryRedirect => 307,
            Status::PermanentRedirect => 308,
            Status::Gone => 410,
            Status::BadRequest => 400,
            Status::Unauthorized => 401,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PreconditionFailed => 412,
            Status::PayloadTooLarge => 413,
            Status::RangeNotSatisfiable => 416,
            Status::UnprocessableContent => 422,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::NotImplemented => 501,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::InsufficientStorage => 507,
            Status::NonAuthoritativeInformation => 203,
            Status::ResetContent => 205,
            Status::MultipleChoices => 300,
            Status::PaymentRequired => 402,
            Status::NotAcceptable => 406,
            Status::RequestTimeout => 408,
            Status::Conflict => 409,
            Status::LengthRequired => 411,
            Status::UnsupportedMediaType => 415,
            Status::ExpectationFailed => 417,
            Status::ImATeapot => 418,
            Status::TooEarly => 425,
            Status::UpgradeRequired => 426,
            Status::PreconditionRequired => 428,
            Status::TooManyRequests => 429,
            Status::UnavailableForLegalReasons => 451,
            Status::HttpVersionNotSupported => 505,
        }
    }

    /// The status with this code, if the node sends it.
    pub fn from_code(code: u16) -> Option<Status> {
        STATUSES.iter().copied().find(|s| s.code() == code)
    }

    /// An upstream's status as the node passes it on: the same code where
    /// the node has it, else the class's general one (`2xx` 200, `3xx` and
    /// `4xx` 400... as RFC 9110 §15 lets a recipient treat an unknown code).
    pub fn passed_on(code: u16) -> Status {
        Status::from_code(code).unwrap_or(match code {
            ..=299 => Status::Ok,
            300..=399 => Status::MultipleChoices,
            400..=499 => Status::BadRequest,
            _ => Status::BadGateway,
        })
    }

    /// Its place in [`STATUSES`], which lists the variants in declaration
    /// order (a test checks it), so this is the discriminant, not a search.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::SwitchingProtocols => "Switching Protocols",
            Status::Ok => "OK",
            Status::Created => "Created",
            Status::Accepted => "Accepted",
            Status::NoContent => "No Content",
            Status::PartialContent => "Partial Content",
            Status::NotModified => "Not Modified",
            Status::MovedPermanently => "Moved Permanently",
            Status::Found => "Found",
            Status::SeeOther => "See Other",
            Status::TemporaryRedirect => "Temporary Redirect",
            Status::PermanentRedirect => "Permanent Redirect",
            Status::Gone => "Gone",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::PreconditionFailed => "Precondition Failed",
            Status::PayloadTooLarge => "Content Too Large",
            Status::RangeNotSatisfiable => "Range Not Satisfiable",
            Status::UnprocessableContent => "Unprocessable Content",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::NotImplemented => "Not Implemented",
            Status::BadGateway => "Bad Gateway",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::GatewayTimeout => "Gateway Timeout",
            Status::InsufficientStorage => "Insufficient Storage",
            Status::NonAuthoritativeInformation => "Non-Authoritative Information",
            Status::ResetContent => "Reset Content",
            Status::MultipleChoices => "Multiple Choices",
            Status::PaymentRequired => "Payment Required",
            Status::NotAcceptable => "Not Acceptable",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::LengthRequired => "Length Required",
            Status::UnsupportedMediaType => "Unsupported Media Type",
            Status::ExpectationFailed => "Expectation Failed",
            Status::ImATeapot => "I'm a teapot",
            Status::TooEarly => "Too Early",
            Status::UpgradeRequired => "Upgrade Required",
            Status::PreconditionRequired => "Precondition Required",
            Status::TooManyRequests => "Too Many Requests",
            Status::UnavailableForLegalReasons => "Unavailable For Legal Reasons",
            Status::HttpVersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_listed_in_the_order_of_their_index() {
        for (i, status) in STATUSES.iter().enumerate() {
            assert_eq!(status.index(), i, "{status:?}");
        }
    }
}
