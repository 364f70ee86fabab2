//! The `INFO writebehind` section: the figures the [`Listener`](super::Listener) reports, one field
//! each (the same figures `WB.STATUS` shows).

use std::ffi::{c_int, CString};

use redis_module::raw;

extern "C" fn info_callback(ictx: *mut raw::RedisModuleInfoCtx, for_crash_report: c_int) {
    crate::host::ffi::guard("INFO", || {
        let apis = unsafe {
            (
                raw::RedisModule_InfoAddSection,
                raw::RedisModule_InfoAddFieldLongLong,
                raw::RedisModule_InfoAddFieldCString,
            )
        };
        let (Some(add_section), Some(add_int), Some(add_text)) = apis else {
            return;
        };
        unsafe { add_section(ictx, std::ptr::null_mut()) };
        let Some(listener) = super::listener() else {
            return;
        };
        for (name, figure) in listener.report(for_crash_report == 0) {
            let Ok(field) = CString::new(name) else {
                continue;
            };
            match figure {
                Figure::Int(n) => unsafe {
                    add_int(ictx, field.as_ptr(), n);
                },
                Figure::Text(t) => {
                    let clean: String = t
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    if let Ok(value) = CString::new(clean) {
                        unsafe { add_text(ictx, field.as_ptr(), value.as_ptr()) };
                    }
                }
            }
        }
    });
}

/// One figure of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Int(i64),
    Text(String),
}

impl From<i64> for Figure {
    fn from(n: i64) -> Figure {
        Figure::Int(n)
    }
}
impl From<u64> for Figure {
    fn from(n: u64) -> Figure {
        Figure::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<&str> for Figure {
    fn from(s: &str) -> Figure {
        Figure::Text(s.to_string())
    }
}
impl From<String> for Figure {
    fn from(s: String) -> Figure {
        Figure::Text(s)
    }
}

/// Registers the section (at load).
pub fn register(ctx: &redis_module::Context) -> Result<(), String> {
    match unsafe { raw::RedisModule_RegisterInfoFunc } {
        Some(f) if unsafe { f(ctx.ctx, Some(info_callback)) } == raw::REDISMODULE_OK as c_int => {
            Ok(())
        }
        _ => Err("could not register the INFO section".into()),
    }
}
