"""The run-time configuration: get, change, reset, validate, export, import, presets."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.common.deps import ConfigDep
from app.api.common.errors import ApiError
from app.api.gateway.schemas.config import (
    ConfigExport,
    ConfigImport,
    ConfigOut,
    ConfigPatch,
    OptionsOut,
    Validation,
)

router = APIRouter(prefix="/gateway/config", tags=["config"])


@router.get("", operation_id="get_config", response_model=ConfigOut)
async def get_config(config: ConfigDep) -> ConfigOut:
    """The live configuration."""
    return ConfigOut.from_config(config.config)


@router.patch("", operation_id="update_config", response_model=ConfigOut)
async def update_config(body: ConfigPatch, config: ConfigDep) -> ConfigOut:
    """Change the settings given; the others keep their values."""
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if not await config.aupdate_config(**changes):
        raise ApiError(422, "Invalid configuration", "the configuration could not be stored")
    return ConfigOut.from_config(config.config)


@router.post("/reset", operation_id="reset_config", response_model=ConfigOut)
async def reset_config(config: ConfigDep) -> ConfigOut:
    """Back to the defaults (the `GATEWAY_*` settings)."""
    await config.areset_to_defaults()
    return ConfigOut.from_config(config.config)


@router.get("/validate", operation_id="validate_config", response_model=Validation)
async def validate_config(config: ConfigDep) -> Validation:
    """Check ranges, that backends answer, and that the default model is installed."""
    return Validation.model_validate(await config.avalidate_config())


@router.get(
    "/export",
    operation_id="export_config",
    response_model=ConfigExport,
    response_class=JSONResponse,
)
async def export_config(config: ConfigDep) -> JSONResponse:
    """The configuration and per-model configs as a JSON download."""
    data = ConfigExport.model_validate(await config.aexport_data()).model_dump(mode="json")
    return JSONResponse(
        data, headers={"Content-Disposition": 'attachment; filename="ollama-gateway-config.json"'}
    )


@router.post("/import", operation_id="import_config", response_model=ConfigOut)
async def import_config(body: ConfigImport, config: ConfigDep) -> ConfigOut:
    """Apply an exported configuration (a JSON body, never a server file path)."""
    data = {
        "config": body.config.model_dump(exclude_none=True),
        "model_configs": body.model_configs,
    }
    if not await config.aimport_data(data):
        raise ApiError(422, "Invalid configuration", "the configuration could not be imported")
    return ConfigOut.from_config(config.config)


@router.get("/presets", operation_id="get_presets", response_model=dict[str, OptionsOut])
async def get_presets(config: ConfigDep) -> dict[str, OptionsOut]:
    """Named ExecutionOptions: fast, creative, balanced, precise, long_form."""
    return {
        name: OptionsOut.from_options(options)
        for name, options in config.get_execution_presets().items()
    }
